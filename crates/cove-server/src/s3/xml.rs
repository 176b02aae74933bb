//! The few S3 XML documents the endpoint reads and writes, by hand: the shapes are fixed and
//! small, so no XML library is needed.

use chrono::{DateTime, Utc};

use super::store::{Listed, PartInfo};

const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Escapes text for element content.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#34;", "\"")
        .replace("&amp;", "&")
}

/// S3's timestamp form: `2009-10-12T17:50:30.000Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// `<Error>` body.
pub fn error(code: &str, message: &str, resource: &str, request_id: &str) -> String {
    format!(
        "{HEADER}<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>",
        escape(code),
        escape(message),
        escape(resource),
        escape(request_id)
    )
}

/// Answer to `CreateMultipartUpload`.
pub fn initiate_multipart(bucket: &str, key: &str, upload_id: &str) -> String {
    format!(
        "{HEADER}<InitiateMultipartUploadResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId></InitiateMultipartUploadResult>",
        escape(bucket),
        escape(key),
        escape(upload_id)
    )
}

/// Answer to `CompleteMultipartUpload`.
pub fn complete_multipart(location: &str, bucket: &str, key: &str, etag: &str) -> String {
    format!(
        "{HEADER}<CompleteMultipartUploadResult xmlns=\"{NS}\"><Location>{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
        escape(location),
        escape(bucket),
        escape(key),
        escape(&format!("\"{etag}\""))
    )
}

/// What a `ListObjectsV2` answer says besides the objects.
#[derive(Debug, Clone, Default)]
pub struct ListV2<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// Requested prefix.
    pub prefix: &'a str,
    /// Requested `max-keys`.
    pub max_keys: usize,
    /// Echoed `continuation-token`.
    pub continuation_token: Option<&'a str>,
    /// Echoed `start-after`.
    pub start_after: Option<&'a str>,
    /// Token for the next page when truncated.
    pub next_token: Option<String>,
    /// `encoding-type=url` was asked for.
    pub url_encode: bool,
}

/// Answer to `ListObjectsV2`.
pub fn list_v2(l: &ListV2<'_>, objects: &[Listed]) -> String {
    let enc = |s: &str| if l.url_encode { super::sigv4::uri_encode(s, true) } else { escape(s) };
    let mut s = format!(
        "{HEADER}<ListBucketResult xmlns=\"{NS}\"><Name>{}</Name><Prefix>{}</Prefix><KeyCount>{}</KeyCount><MaxKeys>{}</MaxKeys><IsTruncated>{}</IsTruncated>",
        escape(l.bucket),
        enc(l.prefix),
        objects.len(),
        l.max_keys,
        l.next_token.is_some()
    );
    if l.url_encode {
        s.push_str("<EncodingType>url</EncodingType>");
    }
    if let Some(t) = l.continuation_token {
        s.push_str(&format!("<ContinuationToken>{}</ContinuationToken>", escape(t)));
    }
    if let Some(t) = &l.next_token {
        s.push_str(&format!("<NextContinuationToken>{}</NextContinuationToken>", escape(t)));
    }
    if let Some(t) = l.start_after {
        s.push_str(&format!("<StartAfter>{}</StartAfter>", enc(t)));
    }
    for o in objects {
        s.push_str(&format!(
            "<Contents><Key>{}</Key><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size><StorageClass>STANDARD</StorageClass></Contents>",
            enc(&o.key),
            timestamp(o.meta.last_modified),
            escape(&format!("\"{}\"", o.meta.etag)),
            o.meta.size
        ));
    }
    s.push_str("</ListBucketResult>");
    s
}

/// What a `ListParts` answer says besides the parts.
#[derive(Debug, Clone, Default)]
pub struct ListParts<'a> {
    /// Bucket.
    pub bucket: &'a str,
    /// Key.
    pub key: &'a str,
    /// Upload id.
    pub upload_id: &'a str,
    /// Echoed `part-number-marker`.
    pub marker: u32,
    /// Requested `max-parts`.
    pub max_parts: usize,
    /// More parts follow.
    pub truncated: bool,
}

/// Answer to `ListParts`.
pub fn list_parts(l: &ListParts<'_>, parts: &[PartInfo]) -> String {
    let next = parts.last().map_or(l.marker, |p| p.number);
    let mut s = format!(
        "{HEADER}<ListPartsResult xmlns=\"{NS}\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId><PartNumberMarker>{}</PartNumberMarker><NextPartNumberMarker>{next}</NextPartNumberMarker><MaxParts>{}</MaxParts><IsTruncated>{}</IsTruncated><StorageClass>STANDARD</StorageClass>",
        escape(l.bucket),
        escape(l.key),
        escape(l.upload_id),
        l.marker,
        l.max_parts,
        l.truncated
    );
    for p in parts {
        s.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><LastModified>{}</LastModified><ETag>{}</ETag><Size>{}</Size></Part>",
            p.number,
            timestamp(p.last_modified),
            escape(&format!("\"{}\"", p.etag)),
            p.size
        ));
    }
    s.push_str("</ListPartsResult>");
    s
}

/// The contents of each `<name>…</name>` element (attributes and namespace prefixes allowed
/// on the opening tag), in document order.
fn elements<'a>(xml: &'a str, name: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find('<') {
        rest = &rest[i + 1..];
        let tag_end = match rest.find('>') {
            Some(e) => e,
            None => break,
        };
        let tag = &rest[..tag_end];
        let tag_name = tag.split_whitespace().next().unwrap_or("");
        let local = tag_name.rsplit(':').next().unwrap_or("");
        if local != name || tag_name.starts_with('/') || tag.ends_with('/') {
            continue;
        }
        let body_start = tag_end + 1;
        let close = format!("</{tag_name}>");
        let Some(end) = rest[body_start..].find(&close) else { break };
        out.push(&rest[body_start..body_start + end]);
        rest = &rest[body_start + end + close.len()..];
    }
    out
}

/// `(PartNumber, ETag)` pairs of a `CompleteMultipartUpload` body; `None` if malformed.
pub fn parse_complete(body: &str) -> Option<Vec<(u32, String)>> {
    let mut parts = Vec::new();
    for part in elements(body, "Part") {
        let n = elements(part, "PartNumber").first()?.trim().parse().ok()?;
        let etag = unescape(elements(part, "ETag").first()?.trim());
        parts.push((n, etag));
    }
    Some(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_body_from_either_sdk_parses() {
        let aws = r#"<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>&quot;aa&quot;</ETag><ChecksumCRC32>AAAAAA==</ChecksumCRC32><PartNumber>1</PartNumber></Part><Part><ETag>"bb"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        assert_eq!(parse_complete(aws).unwrap(), vec![(1, "\"aa\"".to_string()), (2, "\"bb\"".to_string())]);
        let obstore = "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"cc\"</ETag></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(obstore).unwrap(), vec![(1, "\"cc\"".to_string())]);
        assert!(
            parse_complete("<CompleteMultipartUpload><Part><ETag>x</ETag></Part></CompleteMultipartUpload>").is_none()
        );
    }

    #[test]
    fn error_bodies_escape_their_text() {
        let x = error("NoSuchKey", "no <key>", "/b/k&1", "r1");
        assert!(x.contains("<Code>NoSuchKey</Code><Message>no &lt;key&gt;</Message><Resource>/b/k&amp;1</Resource>"));
    }
}
