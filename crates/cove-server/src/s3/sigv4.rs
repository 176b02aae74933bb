//! AWS Signature Version 4 as S3 uses it, header form only (`Authorization: AWS4-HMAC-SHA256
//! Credential=…, SignedHeaders=…, Signature=…`). Pure functions, no IO: the endpoint parses the
//! header, rebuilds the canonical request from what arrived and compares signatures.
//!
//! See <https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html>. S3 differs
//! from the other services in one point: the path is URI-encoded once, not twice.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The only algorithm accepted.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// `x-amz-content-sha256` when the payload is not signed.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// `x-amz-content-sha256` for an `aws-chunked` body with unsigned chunks and a checksum trailer.
pub const STREAMING_UNSIGNED_TRAILER: &str = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
/// The sha256 of nothing, which bodiless requests sign.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// A parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id from the credential.
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub date: String,
    /// Region from the credential scope.
    pub region: String,
    /// Service from the credential scope (`s3`).
    pub service: String,
    /// Lowercase header names, in the order given (they must be sorted).
    pub signed_headers: Vec<String>,
    /// Lowercase hex signature.
    pub signature: String,
}

/// Why a request's signature could not even be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// The header names another scheme (V2, or a presigned URL form).
    #[error("only AWS4-HMAC-SHA256 header authorization is supported")]
    UnsupportedAlgorithm,
    /// The header is missing a part or has a badly formed one.
    #[error("malformed authorization header: {0}")]
    MalformedAuthorization(&'static str),
    /// A header listed in `SignedHeaders` is absent.
    #[error("signed header {0:?} is missing from the request")]
    MissingSignedHeader(String),
    /// The path or query has an invalid percent escape or is not UTF-8.
    #[error("invalid percent-encoding in the request target")]
    BadEncoding,
}

impl Authorization {
    /// Parses the header value.
    pub fn parse(header: &str) -> Result<Self, SigV4Error> {
        let rest = header.trim().strip_prefix(ALGORITHM).ok_or(SigV4Error::UnsupportedAlgorithm)?;
        if !rest.starts_with(' ') {
            return Err(SigV4Error::UnsupportedAlgorithm);
        }
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let Some((k, v)) = part.trim().split_once('=') else {
                return Err(SigV4Error::MalformedAuthorization("expected Key=Value parts"));
            };
            match k.trim() {
                "Credential" => credential = Some(v.trim()),
                "SignedHeaders" => signed = Some(v.trim()),
                "Signature" => signature = Some(v.trim()),
                _ => {}
            }
        }
        let credential = credential.ok_or(SigV4Error::MalformedAuthorization("no Credential"))?;
        let signed = signed.ok_or(SigV4Error::MalformedAuthorization("no SignedHeaders"))?;
        let signature = signature.ok_or(SigV4Error::MalformedAuthorization("no Signature"))?;
        // The access key id itself never contains '/', so split from the right.
        let mut it = credential.rsplitn(5, '/');
        let (Some(term), Some(service), Some(region), Some(date), Some(akid)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            return Err(SigV4Error::MalformedAuthorization("Credential is not KEY/DATE/REGION/SERVICE/aws4_request"));
        };
        if term != "aws4_request" || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) || akid.is_empty() {
            return Err(SigV4Error::MalformedAuthorization("Credential is not KEY/DATE/REGION/SERVICE/aws4_request"));
        }
        let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
        if signed_headers.iter().any(|h| h.is_empty() || h.bytes().any(|b| b.is_ascii_uppercase())) {
            return Err(SigV4Error::MalformedAuthorization("SignedHeaders must be lowercase names"));
        }
        if signature.len() != 64 || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SigV4Error::MalformedAuthorization("Signature is not 64 hex digits"));
        }
        Ok(Authorization {
            access_key_id: akid.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_ascii_lowercase(),
        })
    }

    /// `DATE/REGION/SERVICE/aws4_request`.
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

/// What the canonical request is built from, as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The path exactly as sent (still percent-encoded).
    pub raw_path: &'a str,
    /// The query string exactly as sent, without `?`.
    pub raw_query: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The `x-amz-content-sha256` value (or the hex hash the client signed).
    pub payload_hash: &'a str,
}

/// AWS's URI encoding: everything but `A-Za-z0-9-_.~` becomes `%XX` (uppercase); `/` too
/// unless `keep_slash`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (a `+` stays a `+`); `None` for a broken escape or non-UTF-8 result.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path, decoded and re-encoded segment by segment (S3 encodes once).
pub fn canonical_uri(raw_path: &str) -> Result<String, SigV4Error> {
    if raw_path.is_empty() {
        return Ok("/".into());
    }
    let mut out = Vec::new();
    for seg in raw_path.split('/') {
        out.push(uri_encode(&percent_decode(seg).ok_or(SigV4Error::BadEncoding)?, false));
    }
    Ok(out.join("/"))
}

/// Query parameters decoded, re-encoded, sorted by name then value, `name=value` joined by `&`
/// (a bare `uploads` becomes `uploads=`).
pub fn canonical_query(raw_query: &str) -> Result<String, SigV4Error> {
    let mut pairs = Vec::new();
    for p in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        let k = uri_encode(&percent_decode(k).ok_or(SigV4Error::BadEncoding)?, false);
        let v = uri_encode(&percent_decode(v).ok_or(SigV4Error::BadEncoding)?, false);
        pairs.push((k, v));
    }
    pairs.sort();
    Ok(pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&"))
}

/// `name:value\n` for each signed header: values trimmed, inner runs of spaces collapsed,
/// repeated headers joined by `,`.
pub fn canonical_headers(headers: &HeaderMap, signed: &[String]) -> Result<String, SigV4Error> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(SigV4Error::MissingSignedHeader(name.clone()));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The canonical request of the SigV4 specification.
pub fn canonical_request(req: &RequestParts<'_>, signed_headers: &[String]) -> Result<String, SigV4Error> {
    Ok(format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path)?,
        canonical_query(req.raw_query)?,
        canonical_headers(req.headers, signed_headers)?,
        signed_headers.join(";"),
        req.payload_hash
    ))
}

/// `AWS4-HMAC-SHA256\n<amz-date>\n<scope>\n<hex sha256 of the canonical request>`.
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!("{ALGORITHM}\n{amz_date}\n{scope}\n{}", hex::encode(Sha256::digest(canonical_request.as_bytes())))
}

/// HMAC-SHA256.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The derived key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac_sha256(&k, region.as_bytes());
    let k = hmac_sha256(&k, service.as_bytes());
    hmac_sha256(&k, b"aws4_request")
}

/// Hex signature of `string_to_sign` with the derived key.
pub fn signature(secret: &str, auth_scope: (&str, &str, &str), string_to_sign: &str) -> String {
    let (date, region, service) = auth_scope;
    hex::encode(hmac_sha256(&signing_key(secret, date, region, service), string_to_sign.as_bytes()))
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Recomputes the signature of `req` under `auth` with `secret` and compares it.
pub fn verify(req: &RequestParts<'_>, auth: &Authorization, amz_date: &str, secret: &str) -> Result<bool, SigV4Error> {
    let creq = canonical_request(req, &auth.signed_headers)?;
    let sts = string_to_sign(amz_date, &auth.scope(), &creq);
    let expected = signature(secret, (&auth.date, &auth.region, &auth.service), &sts);
    Ok(constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const AKID: &str = "AKIAIOSFODNN7EXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20130524T000000Z";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn auth(signed: &str, signature: &str) -> Authorization {
        Authorization::parse(&format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/20130524/us-east-1/s3/aws4_request, SignedHeaders={signed}, Signature={signature}"
        ))
        .unwrap()
    }

    #[test]
    fn the_aws_get_object_example_reproduces_the_published_canonical_request_and_signature() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", DATE),
        ]);
        let req = RequestParts {
            method: "GET",
            raw_path: "/test.txt",
            raw_query: "",
            headers: &h,
            payload_hash: EMPTY_SHA256,
        };
        let a = auth(
            "host;range;x-amz-content-sha256;x-amz-date",
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
        );
        let creq = canonical_request(&req, &a.signed_headers).unwrap();
        assert_eq!(
            creq,
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n\
             x-amz-content-sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
             x-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(DATE, &a.scope(), &creq);
        assert_eq!(
            sts,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert!(verify(&req, &a, DATE, SECRET).unwrap());
        assert!(!verify(&req, &a, DATE, "wrong-secret").unwrap());
    }

    #[test]
    fn the_aws_put_object_example_encodes_the_dollar_in_the_key() {
        let body_hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("date", "Fri, 24 May 2013 00:00:00 GMT"),
            ("x-amz-date", DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", body_hash),
        ]);
        let req = RequestParts {
            method: "PUT",
            raw_path: "/test$file.text",
            raw_query: "",
            headers: &h,
            payload_hash: body_hash,
        };
        let a = auth(
            "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
        );
        assert!(canonical_request(&req, &a.signed_headers).unwrap().starts_with("PUT\n/test%24file.text\n\n"));
        assert!(verify(&req, &a, DATE, SECRET).unwrap());
    }

    #[test]
    fn the_aws_list_objects_example_sorts_and_encodes_the_query() {
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-content-sha256", EMPTY_SHA256),
        ]);
        let req = RequestParts {
            method: "GET",
            raw_path: "/",
            raw_query: "prefix=J&max-keys=2",
            headers: &h,
            payload_hash: EMPTY_SHA256,
        };
        let a = auth(
            "host;x-amz-content-sha256;x-amz-date",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        );
        assert_eq!(canonical_query(req.raw_query).unwrap(), "max-keys=2&prefix=J");
        assert!(verify(&req, &a, DATE, SECRET).unwrap());
    }

    #[test]
    fn query_canonicalization_adds_equals_to_bare_names_and_reencodes_values() {
        assert_eq!(canonical_query("uploads").unwrap(), "uploads=");
        assert_eq!(
            canonical_query("prefix=org%2Fabc%2F&list-type=2&max-keys=1").unwrap(),
            "list-type=2&max-keys=1&prefix=org%2Fabc%2F"
        );
        assert_eq!(canonical_query("a=%7e&b=x y").unwrap(), "a=~&b=x%20y");
        assert_eq!(canonical_query("bad=%zz"), Err(SigV4Error::BadEncoding));
    }

    #[test]
    fn paths_are_decoded_then_encoded_once_keeping_slashes() {
        assert_eq!(canonical_uri("/bucket/a%20b/c~d%7E/e+f").unwrap(), "/bucket/a%20b/c~d~/e%2Bf");
        assert_eq!(canonical_uri("").unwrap(), "/");
    }

    #[test]
    fn header_values_are_trimmed_and_repeated_headers_joined() {
        let h = headers(&[("x-a", "  one   two  "), ("x-b", "1"), ("x-b", "2")]);
        assert_eq!(canonical_headers(&h, &["x-a".into(), "x-b".into()]).unwrap(), "x-a:one two\nx-b:1,2\n");
        assert_eq!(canonical_headers(&h, &["x-c".into()]), Err(SigV4Error::MissingSignedHeader("x-c".into())));
    }

    #[test]
    fn malformed_authorization_headers_are_refused() {
        assert_eq!(Authorization::parse("AWS AKID:sig"), Err(SigV4Error::UnsupportedAlgorithm));
        assert!(
            Authorization::parse(
                "AWS4-HMAC-SHA256 Credential=A/2013/us/s3/aws4_request, SignedHeaders=host, Signature=00"
            )
            .is_err()
        );
        let a = auth("host", &"a".repeat(64));
        assert_eq!(a.access_key_id, AKID);
        assert_eq!(a.scope(), "20130524/us-east-1/s3/aws4_request");
    }
}
