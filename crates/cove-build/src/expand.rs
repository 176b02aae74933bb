//! Word processing as BuildKit's shell lexer does it for Dockerfile instructions: quote
//! removal and variable substitution (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`, `${VAR?msg}`), with the Dockerfile's escape
//! character (`\` unless `# escape=` says otherwise).
//!
//! Single quotes keep everything literal; inside double quotes the escape character only
//! escapes `"`, `$` and itself. Unset variables expand to the empty string. It is applied to
//! FROM, ADD, COPY, ENV, ARG, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ONBUILD
//! arguments, never to RUN, CMD or ENTRYPOINT (their shell expands at run time).

use std::collections::BTreeSet;

/// A failed expansion.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExpandError {
    /// A quote or `${` was never closed.
    #[error("unexpected end of {word:?} while looking for matching {expected}")]
    Unterminated {
        /// The word being processed.
        word: String,
        /// What was missing (`"`, `'`, `}`).
        expected: char,
    },
    /// `${` was followed by something that is not a variable name.
    #[error("bad substitution in {word:?}")]
    BadSubstitution {
        /// The word being processed.
        word: String,
    },
    /// `${VAR:?message}` with VAR unset (or empty).
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message from the word.
        message: String,
    },
}

/// Quote removal and substitution with one escape character.
#[derive(Debug, Clone, Copy)]
pub struct Lexer {
    escape: char,
}

/// The result of processing one word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The word after quote removal and substitution.
    pub value: String,
    /// Names of the variables the word referred to (for cache keys: which args a step uses).
    pub used: BTreeSet<String>,
}

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    word: &'a str,
    escape: char,
    used: BTreeSet<String>,
    /// Whether quotes are syntax (words) or text (heredoc bodies).
    quotes: bool,
}

impl Lexer {
    /// A lexer for the Dockerfile's escape character.
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    /// Processes one word: quotes removed, variables substituted from `env`.
    pub fn process_word(&self, word: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ExpandError> {
        let mut s = Scanner::new(word, self.escape, true);
        let value = s.process(env, None, false)?.concat();
        Ok(Expanded { value, used: s.used })
    }

    /// Substitutes variables in a heredoc body, leaving quotes alone.
    pub fn process_heredoc(&self, body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ExpandError> {
        let mut s = Scanner::new(body, self.escape, false);
        let value = s.process(env, None, false)?.concat();
        Ok(Expanded { value, used: s.used })
    }

    /// Processes a string into several words split on unquoted whitespace (EXPOSE, VOLUME in
    /// its string form).
    pub fn process_words(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Vec<String>, BTreeSet<String>), ExpandError> {
        let mut s = Scanner::new(text, self.escape, true);
        let words = s.process(env, None, true)?;
        Ok((words.into_iter().filter(|w| !w.is_empty()).collect(), s.used))
    }
}

impl<'a> Scanner<'a> {
    fn new(word: &'a str, escape: char, quotes: bool) -> Self {
        Scanner { chars: word.chars().collect(), pos: 0, word, escape, used: BTreeSet::new(), quotes }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes until `stop` (consumed) or the end; with `split`, unquoted whitespace
    /// separates words.
    fn process(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        stop: Option<char>,
        split: bool,
    ) -> Result<Vec<String>, ExpandError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        loop {
            let Some(c) = self.peek() else {
                if let Some(expected) = stop {
                    return Err(ExpandError::Unterminated { word: self.word.to_string(), expected });
                }
                break;
            };
            if Some(c) == stop {
                self.next();
                break;
            }
            if split && c.is_whitespace() {
                self.next();
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            in_word = true;
            if !self.quotes {
                match c {
                    '$' => {
                        let v = self.dollar(env)?;
                        cur.push_str(&v);
                    }
                    c if c == self.escape && self.chars.get(self.pos + 1) == Some(&'$') => {
                        self.pos += 2;
                        cur.push('$');
                    }
                    c => {
                        self.next();
                        cur.push(c);
                    }
                }
                continue;
            }
            match c {
                '\'' => {
                    self.next();
                    loop {
                        match self.next() {
                            None => {
                                return Err(ExpandError::Unterminated { word: self.word.to_string(), expected: '\'' });
                            }
                            Some('\'') => break,
                            Some(ch) => cur.push(ch),
                        }
                    }
                }
                '"' => {
                    self.next();
                    self.double_quoted(env, &mut cur)?;
                }
                '$' => {
                    let v = self.dollar(env)?;
                    cur.push_str(&v);
                }
                c if c == self.escape => {
                    self.next();
                    if let Some(ch) = self.next() {
                        cur.push(ch);
                    }
                }
                c => {
                    self.next();
                    cur.push(c);
                }
            }
        }
        if in_word || words.is_empty() {
            words.push(cur);
        }
        Ok(words)
    }

    fn double_quoted(&mut self, env: &dyn Fn(&str) -> Option<String>, out: &mut String) -> Result<(), ExpandError> {
        loop {
            match self.peek() {
                None => return Err(ExpandError::Unterminated { word: self.word.to_string(), expected: '"' }),
                Some('"') => {
                    self.next();
                    return Ok(());
                }
                Some('$') => {
                    let v = self.dollar(env)?;
                    out.push_str(&v);
                }
                Some(c) => {
                    self.next();
                    if c == self.escape {
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.next();
                                out.push(n);
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.next();
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
        self.next(); // '$'
        match self.peek() {
            Some('{') => {
                self.next();
                let name = self.name();
                if name.is_empty() {
                    return Err(ExpandError::BadSubstitution { word: self.word.to_string() });
                }
                self.used.insert(name.clone());
                let value = env(&name);
                match self.next() {
                    Some('}') => Ok(value.unwrap_or_default()),
                    Some(c) if c == ':' || c == '-' || c == '+' || c == '?' => {
                        let (colon, op) = if c == ':' {
                            match self.next() {
                                Some(op @ ('-' | '+' | '?')) => (true, op),
                                _ => return Err(ExpandError::BadSubstitution { word: self.word.to_string() }),
                            }
                        } else {
                            (false, c)
                        };
                        let word = self.process(env, Some('}'), false)?.concat();
                        // With a colon an empty value counts as unset.
                        let set = match &value {
                            Some(v) => !(colon && v.is_empty()),
                            None => false,
                        };
                        match op {
                            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
                            '+' => Ok(if set { word } else { String::new() }),
                            _ => {
                                if set {
                                    Ok(value.unwrap_or_default())
                                } else {
                                    let message =
                                        if word.is_empty() { "is not allowed to be unset".into() } else { word };
                                    Err(ExpandError::Required { name, message })
                                }
                            }
                        }
                    }
                    _ => Err(ExpandError::BadSubstitution { word: self.word.to_string() }),
                }
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                self.used.insert(name.clone());
                Ok(env(&name).unwrap_or_default())
            }
            _ => Ok("$".to_string()),
        }
    }
}

/// Splits a shell-form argument string into words on unquoted whitespace, keeping quotes and
/// escapes in place (Docker's `parseWords`), for ENV/LABEL/ARG `key=value` lists.
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                cur.push(c);
            }
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            _ if c == escape && quote != Some('\'') => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    fn word(w: &str, e: &[(&str, &str)]) -> String {
        Lexer::new('\\').process_word(w, &env(e)).unwrap().value
    }

    #[test]
    fn variables_expand_in_both_syntaxes_and_unset_ones_are_empty() {
        let e = [("A", "1"), ("B", "two")];
        assert_eq!(word("$A-${B}/$C.x", &e), "1-two/.x");
        assert_eq!(word("cost $", &e), "cost $");
    }

    #[test]
    fn defaults_and_alternatives_follow_the_colon_rules() {
        let e = [("SET", "v"), ("EMPTY", "")];
        assert_eq!(word("${SET:-d}", &e), "v");
        assert_eq!(word("${UNSET:-d}", &e), "d");
        assert_eq!(word("${EMPTY:-d}", &e), "d");
        assert_eq!(word("${EMPTY-d}", &e), "");
        assert_eq!(word("${SET:+alt}", &e), "alt");
        assert_eq!(word("${UNSET:+alt}", &e), "");
        assert_eq!(word("${UNSET:-$SET-x}", &e), "v-x");
        let err = Lexer::new('\\').process_word("${UNSET:?must be set}", &env(&e)).unwrap_err();
        assert_eq!(err.to_string(), "UNSET: must be set");
    }

    #[test]
    fn quotes_are_removed_and_single_quotes_stop_expansion() {
        let e = [("A", "1")];
        assert_eq!(word("'b c'", &e), "b c");
        assert_eq!(word("'$A'\"$A\"", &e), "$A1");
        assert_eq!(word(r#""a\"b\$A\x""#, &e), r#"a"b$A\x"#);
        assert_eq!(word(r"\$A", &e), "$A");
    }

    #[test]
    fn a_backtick_escape_character_escapes_instead_of_the_backslash() {
        let lx = Lexer::new('`');
        let out = lx.process_word(r"C:\dir`$A", &env(&[("A", "1")])).unwrap();
        assert_eq!(out.value, r"C:\dir$A");
    }

    #[test]
    fn used_variables_are_reported() {
        let out = Lexer::new('\\').process_word("${A:-$B}$C", &env(&[])).unwrap();
        assert_eq!(out.used.into_iter().collect::<Vec<_>>(), ["A", "B", "C"]);
    }

    #[test]
    fn words_split_on_unquoted_whitespace() {
        let (words, _) = Lexer::new('\\').process_words("80/tcp  \"$P\"/udp", &env(&[("P", "53")])).unwrap();
        assert_eq!(words, ["80/tcp", "53/udp"]);
        assert_eq!(split_words(r#"A='b c' D="e f" g\ h"#, '\\'), [r#"A='b c'"#, r#"D="e f""#, r"g\ h"]);
    }

    #[test]
    fn heredoc_bodies_expand_variables_but_keep_quotes() {
        let out = Lexer::new('\\').process_heredoc("a='$A' \\$B \"x\"\n", &env(&[("A", "1")])).unwrap();
        assert_eq!(out.value, "a='1' $B \"x\"\n");
    }

    #[test]
    fn an_unclosed_quote_is_an_error() {
        assert!(Lexer::new('\\').process_word("'abc", &env(&[])).is_err());
        assert!(Lexer::new('\\').process_word("${A", &env(&[])).is_err());
    }
}
