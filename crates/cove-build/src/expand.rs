//! Word processing as BuildKit's shell lexer does it for Dockerfile instructions: quote
//! removal and variable substitution (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`, `${VAR?msg}`), with the Dockerfile's escape
//! character (`\` unless `# escape=` says otherwise).
//!
//! Single quotes keep everything literal; inside double quotes the escape character only
//! escapes `"`, `$` and itself. Unset variables expand to the empty string. It is applied to
//! FROM, ADD, COPY, ENV, ARG, EXPOSE, LABEL, STOPSIGNAL, USER, VOLUME, WORKDIR and ONBUILD
//! arguments, never to RUN, CMD or ENTRYPOINT (their shell expands at run time).
//!
//! Every expansion is bounded while it runs: the bytes it produces, and the values of the
//! variables it reads even when a substitution only tests them (`${A:+x}`), are charged to
//! a limit ([`MAX_EXPANDED_WORD_BYTES`] for a word, [`MAX_EXPANDED_INSTRUCTION_BYTES`] for
//! a heredoc body or a word list), and the expansion stops with [`ExpandError::TooLarge`]
//! at the charge that crosses it. `ARG B=$A$A$A$A`, line after line, ends there.

use std::collections::BTreeSet;

use crate::limits::{MAX_EXPANDED_INSTRUCTION_BYTES, MAX_EXPANDED_WORD_BYTES, Size};

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
    /// The expansion went past its limit.
    #[error("expanded value exceeds {}", Size(*limit))]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
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
    /// Bytes charged against the limit: the result plus the values read but not used.
    pub cost: usize,
}

/// The result of processing a string into several words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandedWords {
    /// The non-empty words.
    pub values: Vec<String>,
    /// Names of the variables referred to.
    pub used: BTreeSet<String>,
    /// Bytes charged against the limit.
    pub cost: usize,
}

struct Scanner<'a> {
    chars: Vec<char>,
    pos: usize,
    word: &'a str,
    escape: char,
    used: BTreeSet<String>,
    /// Whether quotes are syntax (words) or text (heredoc bodies).
    quotes: bool,
    /// Bytes charged so far (output plus values read).
    cost: usize,
    /// The most that may be charged.
    limit: usize,
}

impl Lexer {
    /// A lexer for the Dockerfile's escape character.
    pub fn new(escape: char) -> Self {
        Lexer { escape }
    }

    /// Processes one word: quotes removed, variables substituted from `env`; at most
    /// [`MAX_EXPANDED_WORD_BYTES`].
    pub fn process_word(&self, word: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ExpandError> {
        let mut s = Scanner::new(word, self.escape, true, MAX_EXPANDED_WORD_BYTES);
        let value = s.process(env, None, false)?.concat();
        Ok(Expanded { value, used: s.used, cost: s.cost })
    }

    /// Substitutes variables in a heredoc body, leaving quotes alone; at most
    /// [`MAX_EXPANDED_INSTRUCTION_BYTES`].
    pub fn process_heredoc(&self, body: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Expanded, ExpandError> {
        let mut s = Scanner::new(body, self.escape, false, MAX_EXPANDED_INSTRUCTION_BYTES);
        let value = s.process(env, None, false)?.concat();
        Ok(Expanded { value, used: s.used, cost: s.cost })
    }

    /// Processes a string into several words split on unquoted whitespace (EXPOSE, VOLUME in
    /// its string form); at most [`MAX_EXPANDED_INSTRUCTION_BYTES`] in all.
    pub fn process_words(
        &self,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ExpandedWords, ExpandError> {
        let mut s = Scanner::new(text, self.escape, true, MAX_EXPANDED_INSTRUCTION_BYTES);
        let words = s.process(env, None, true)?;
        Ok(ExpandedWords { values: words.into_iter().filter(|w| !w.is_empty()).collect(), used: s.used, cost: s.cost })
    }
}

impl<'a> Scanner<'a> {
    fn new(word: &'a str, escape: char, quotes: bool, limit: usize) -> Self {
        Scanner { chars: word.chars().collect(), pos: 0, word, escape, used: BTreeSet::new(), quotes, cost: 0, limit }
    }

    /// Charges `n` bytes, failing once the total passes the limit.
    fn charge(&mut self, n: usize) -> Result<(), ExpandError> {
        self.cost = self.cost.saturating_add(n);
        if self.cost > self.limit {
            return Err(ExpandError::TooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// Appends a literal character to `out`, charged.
    fn push(&mut self, out: &mut String, c: char) -> Result<(), ExpandError> {
        self.charge(c.len_utf8())?;
        out.push(c);
        Ok(())
    }

    /// Looks a variable up, charging its value whether it ends up in the result or not.
    fn lookup(&mut self, env: &dyn Fn(&str) -> Option<String>, name: &str) -> Result<Option<String>, ExpandError> {
        let value = env(name);
        self.charge(value.as_ref().map_or(0, String::len))?;
        Ok(value)
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
                        self.push(&mut cur, '$')?;
                    }
                    c => {
                        self.next();
                        self.push(&mut cur, c)?;
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
                            Some(ch) => self.push(&mut cur, ch)?,
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
                        self.push(&mut cur, ch)?;
                    }
                }
                c => {
                    self.next();
                    self.push(&mut cur, c)?;
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
                                self.push(out, n)?;
                                continue;
                            }
                            Some(_) => {}
                        }
                    }
                    self.push(out, c)?;
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
                let value = self.lookup(env, &name)?;
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
                Ok(self.lookup(env, &name)?.unwrap_or_default())
            }
            _ => {
                self.charge(1)?;
                Ok("$".to_string())
            }
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
        let words = Lexer::new('\\').process_words("80/tcp  \"$P\"/udp", &env(&[("P", "53")])).unwrap().values;
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

    #[test]
    fn a_word_expanding_past_the_word_limit_stops_with_an_error_naming_it() {
        let big = "x".repeat(MAX_EXPANDED_WORD_BYTES / 4 + 1);
        let e = Lexer::new('\\').process_word("$A$A$A$A", &env(&[("A", &big)])).unwrap_err();
        assert_eq!(e, ExpandError::TooLarge { limit: MAX_EXPANDED_WORD_BYTES });
        assert_eq!(e.to_string(), "expanded value exceeds 64 KiB");
        let exact = "x".repeat(MAX_EXPANDED_WORD_BYTES / 4);
        let out = Lexer::new('\\').process_word("$A$A$A$A", &env(&[("A", &exact)])).unwrap();
        assert_eq!((out.value.len(), out.cost), (MAX_EXPANDED_WORD_BYTES, MAX_EXPANDED_WORD_BYTES));
    }

    #[test]
    fn values_only_tested_by_a_substitution_count_against_the_limit() {
        let big = "x".repeat(MAX_EXPANDED_WORD_BYTES / 2);
        let word = "${A:+}".repeat(3);
        let e = Lexer::new('\\').process_word(&word, &env(&[("A", &big)])).unwrap_err();
        assert!(matches!(e, ExpandError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn a_million_variable_references_fail_fast_without_building_the_value() {
        let word = "$A".repeat(500_000);
        let a = "y".repeat(1024);
        let t = std::time::Instant::now();
        let e = Lexer::new('\\').process_word(&word, &env(&[("A", &a)])).unwrap_err();
        assert!(matches!(e, ExpandError::TooLarge { .. }));
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
    }

    #[test]
    fn heredoc_bodies_and_word_lists_are_limited_per_instruction() {
        let big = "z".repeat(MAX_EXPANDED_WORD_BYTES);
        let body = "$A\n".repeat(5);
        let e = Lexer::new('\\').process_heredoc(&body, &env(&[("A", &big)])).unwrap_err();
        assert_eq!(e, ExpandError::TooLarge { limit: MAX_EXPANDED_INSTRUCTION_BYTES });
        let e = Lexer::new('\\').process_words("$A $A $A $A $A", &env(&[("A", &big)])).unwrap_err();
        assert_eq!(e.to_string(), "expanded value exceeds 256 KiB");
    }
}
