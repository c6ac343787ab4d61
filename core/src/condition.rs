//! Broadcast conditions: a small, safe expression language standing in for MPush's JavaScript.
//!
//! An MPush broadcast may carry a `condition`, a JavaScript expression the Java server evaluates
//! (with Nashorn) once per connected user; the push goes only to the connections for which it
//! returns Boolean `true`. pushgate runs no JavaScript. It parses the condition once per
//! broadcast into a [`Condition`] (an AST), reports mistakes as a [`ParseError`] with a byte
//! offset, and evaluates the AST per connection with [`Condition::matches`].
//!
//! # Grammar
//!
//! Lowest precedence first; every binary level is left-associative, as in JavaScript.
//!
//! ```text
//! expr     := or
//! or       := and      ( "||" and )*
//! and      := equality ( "&&" equality )*
//! equality := relation ( ("==" | "!=" | "===" | "!==") relation )*
//! relation := additive ( ("<" | "<=" | ">" | ">=" | "contains" | "in") additive )*
//! additive := product  ( ("+" | "-") product )*
//! product  := unary    ( ("*" | "/" | "%") unary )*
//! unary    := ("!" | "-") unary | postfix
//! postfix  := primary ( "." "contains" "(" expr ")" )*
//! primary  := INT | DECIMAL | STRING | "true" | "false" | "null"
//!           | "userId" | "tags" | "clientVersion" | "osName" | "osVersion"
//!           | "version" "(" expr ")" | "(" expr ")" | "[" ( literal ( "," literal )* )? "]"
//! literal  := "-"? INT | "-"? DECIMAL | STRING | "true" | "false" | "null"
//! ```
//!
//! `INT` is ASCII digits without leading zeros that fit an `i64`; `DECIMAL` is `INT "." digits`.
//! `STRING` is single- or double-quoted, with the escapes `\\` `\'` `\"` `\n` `\t` `\r`.
//! Whitespace (any Unicode white space, so a full-width space is fine) separates tokens.
//! A condition is at most [`MAX_CONDITION_BYTES`] long and nests parentheses, brackets, calls
//! and unary operators at most [`MAX_DEPTH`] deep; longer chains of binary operators at one
//! level (`a || b || c ...`) do not count as nesting.
//!
//! # Values
//!
//! - `userId` is a string. `clientVersion`, `osName` and `osVersion` are strings, or `null` when
//!   the connection did not report them.
//! - `tags` is a list of strings: the bound tags string split on `,`, each part trimmed of white
//!   space, empty parts dropped (`" vip, beta,,"` is `["vip", "beta"]`). It is `null` when the
//!   user bound no tags at all.
//! - Numbers are `i64` integers, or `f64` when a decimal literal or an inexact division (`7 / 2`)
//!   is involved. Integer arithmetic is checked: overflow, division or remainder by zero give
//!   *not-a-number* (NaN), as does any float result that is not finite.
//! - `version(x)` turns a string such as `"2.10.3"` into a version: dot-separated ASCII digit
//!   groups, optionally followed by a suffix starting at `-` or `+` that is ignored
//!   (`"2.1.0-beta"` is version 2.1.0). Versions compare group by group as whole numbers, with
//!   missing groups read as 0 (`version('2.1') == version('2.1.0')`, and `2.10 > 2.9`). A
//!   version compared with a string reads the string as a version. `version` of anything that is
//!   not a valid version string is NaN.
//!
//! # Coercions
//!
//! - *To number* (for `-` `*` `/` `%`, unary `-`, `+` without strings, and comparisons between
//!   a number and a string): a number is itself; a string of the form `-?digits` is an `i64`
//!   (too large: NaN) and `-?digits.digits` an `f64`; every other value is NaN. So
//!   `userId % 100 < 20` works for a digit `userId` and is false for `"alice"`.
//! - `+` concatenates when either operand is a string (JavaScript's rule), writing the other
//!   operand as JavaScript would (`null`, `true`, `12`, `NaN`, a list joined with `,`, a version
//!   as its text); otherwise it adds numbers.
//! - `==` / `!=` (and the synonyms `===` / `!==`): `null` equals only `null`; booleans equal only
//!   booleans; numbers and strings compare as numbers when either is a number; two strings compare
//!   by content; a version equals a version or string naming the same version; lists equal
//!   nothing. NaN equals nothing. `!=` is always the negation of `==`.
//! - `<` `<=` `>` `>=`: two numbers numerically (integers and floats exactly); two strings by
//!   bytes, i.e. by Unicode code point (so `'10' < '9'` and `clientVersion >= '2.1'` is a
//!   *string* comparison: use `version(...)` for versions); a number and a string as numbers;
//!   versions as above. Every other pair, and anything involving NaN, is false.
//! - `a contains b` / `a.contains(b)` / `b in a`: on `tags`, whether a tag equals the string `b`
//!   exactly (`"tag-10"` does not contain `'tag-1'`); on a list literal, whether an element `==`
//!   `b`; on a string, whether the string `b` is a substring. Anything else (e.g. `null`) is false.
//! - Truthiness (`!`, `&&`, `||`): `null`, `false`, `0`, NaN and `""` are false; everything else,
//!   including every list, is true. `&&` and `||` short-circuit and yield an operand, as in
//!   JavaScript.
//!
//! A connection matches only when the whole condition evaluates to Boolean `true`; any other
//! value (a string, a number, `null`) does not match, as in MPush's `(Boolean) eval(...)`.
//!
//! # Differences from MPush's JavaScript
//!
//! The language is a subset of JavaScript where the two agree, and is deliberately stricter where
//! JavaScript's loose rules would surprise. Where they differ, pushgate leans towards "no match":
//! - No assignments, statements, functions, comments, object literals, `undefined`, regular
//!   expressions, other methods or properties (`indexOf`, `length`, ...), hex or exponent numbers.
//! - To-number is stricter: `null`, booleans, `""` and padded strings are NaN (JavaScript reads
//!   `null`/`""` as 0 and `true` as 1); `null < 1` and `true == 1` are false.
//! - `===` is loose like `==`; `'12' === 12` is true here.
//! - Integer overflow gives NaN rather than an imprecise float; `1 / 0` is NaN, not `Infinity`.
//! - `in` tests membership of a value (`osName in ['android', 'ios']`), not of an index/property.
//! - `contains` is Java's `String.contains` / `List.contains`, which MPush's Nashorn exposes on
//!   Java values; on `null` it is false here, where Nashorn throws and MPush then answers false
//!   for the whole condition (`osName.contains('a') || true` is true here, false in MPush).
//! - Strings compare by code point, JavaScript by UTF-16 unit (differs only above U+FFFF).
//! - Float-to-string in concatenation uses Rust's shortest round-trip form, which differs from
//!   JavaScript's only for exponent forms (`1e21`).
//!
//! Parsing and evaluation never panic; evaluation touches each AST node at most once, so it costs
//! O(size of the condition × size of the connection's data), and reading `tags` does not allocate.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::str::FromStr;

/// The longest condition accepted, in bytes.
pub const MAX_CONDITION_BYTES: usize = 4096;
/// The deepest nesting of parentheses, brackets, calls and unary operators accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a condition could not be parsed; `offset` is a byte offset into the condition text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("condition parse error at byte {offset}: {message}")]
pub struct ParseError {
    pub offset: usize,
    pub message: String,
}

impl ParseError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        ParseError {
            offset,
            message: message.into(),
        }
    }
}

/// The per-connection facts a condition can read.
#[derive(Debug, Clone, Copy)]
pub struct ConditionInput<'a> {
    pub user_id: &'a str,
    /// The raw tags string as bound, e.g. `"tag-a,tag-b"`.
    pub tags: Option<&'a str>,
    pub client_version: Option<&'a str>,
    pub os_name: Option<&'a str>,
    pub os_version: Option<&'a str>,
}

/// A parsed condition (an AST); cheap to evaluate many times.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    source: String,
    root: Expr,
}

impl Condition {
    /// Parses a condition, checking its size, nesting and every identifier.
    pub fn parse(src: &str) -> Result<Condition, ParseError> {
        if src.len() > MAX_CONDITION_BYTES {
            return Err(ParseError::new(
                MAX_CONDITION_BYTES,
                format!(
                    "condition is {} bytes long; the limit is {MAX_CONDITION_BYTES}",
                    src.len()
                ),
            ));
        }
        let tokens = lex(src)?;
        let mut parser = Parser::new(src, tokens);
        if parser.peek().tok == Tok::Eof {
            return Err(ParseError::new(0, "empty condition"));
        }
        let root = parser.parse_expr()?;
        let next = parser.peek();
        if next.tok != Tok::Eof {
            return Err(ParseError::new(
                next.start,
                format!(
                    "unexpected {} after the end of the expression",
                    parser.describe(next)
                ),
            ));
        }
        Ok(Condition {
            source: src.to_owned(),
            root,
        })
    }

    /// Whether the condition evaluates to Boolean `true` for this connection.
    pub fn matches(&self, input: &ConditionInput<'_>) -> bool {
        matches!(eval(&self.root, input), Value::Bool(true))
    }

    /// The condition's original text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl FromStr for Condition {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Condition::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    /// An identifier or keyword; its text is the token's source span.
    Ident,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Bang,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    AndAnd,
    OrOr,
    Eof,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b'$'
}

fn is_ident_continue(b: u8) -> bool {
    is_ident_start(b) || b.is_ascii_digit()
}

/// Splits the whole condition into tokens, ending with [`Tok::Eof`].
fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        let tok = match b {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'0'..=b'9' => {
                let (tok, end) = lex_number(src, start)?;
                i = end;
                tok
            }
            b'\'' | b'"' => {
                let (s, end) = lex_string(src, start)?;
                i = end;
                Tok::Str(s)
            }
            b if is_ident_start(b) => {
                i += 1;
                while bytes.get(i).is_some_and(|&b| is_ident_continue(b)) {
                    i += 1;
                }
                Tok::Ident
            }
            b if b >= 0x80 => {
                let c = src
                    .get(i..)
                    .and_then(|s| s.chars().next())
                    .unwrap_or('\u{fffd}');
                if c.is_whitespace() {
                    i += c.len_utf8().max(1);
                    continue;
                }
                return Err(ParseError::new(
                    start,
                    format!("unexpected character `{c}`"),
                ));
            }
            _ => {
                let next = bytes.get(i + 1).copied();
                let next2 = bytes.get(i + 2).copied();
                let (tok, len) =
                    match (b, next) {
                        (b'(', _) => (Tok::LParen, 1),
                        (b')', _) => (Tok::RParen, 1),
                        (b'[', _) => (Tok::LBracket, 1),
                        (b']', _) => (Tok::RBracket, 1),
                        (b',', _) => (Tok::Comma, 1),
                        (b'.', _) => (Tok::Dot, 1),
                        (b'+', _) => (Tok::Plus, 1),
                        (b'-', _) => (Tok::Minus, 1),
                        (b'*', _) => (Tok::Star, 1),
                        (b'/', _) => (Tok::Slash, 1),
                        (b'%', _) => (Tok::Percent, 1),
                        (b'!', Some(b'=')) if next2 == Some(b'=') => (Tok::NotEq, 3),
                        (b'!', Some(b'=')) => (Tok::NotEq, 2),
                        (b'!', _) => (Tok::Bang, 1),
                        (b'=', Some(b'=')) if next2 == Some(b'=') => (Tok::EqEq, 3),
                        (b'=', Some(b'=')) => (Tok::EqEq, 2),
                        (b'=', _) => return Err(ParseError::new(
                            start,
                            "`=` is assignment, which a condition cannot do; use `==` to compare",
                        )),
                        (b'<', Some(b'=')) => (Tok::Le, 2),
                        (b'<', _) => (Tok::Lt, 1),
                        (b'>', Some(b'=')) => (Tok::Ge, 2),
                        (b'>', _) => (Tok::Gt, 1),
                        (b'&', Some(b'&')) => (Tok::AndAnd, 2),
                        (b'|', Some(b'|')) => (Tok::OrOr, 2),
                        (b'&' | b'|', _) => {
                            let op = char::from(b);
                            return Err(ParseError::new(
                                start,
                                format!("bitwise `{op}` is not supported; use `{op}{op}`"),
                            ));
                        }
                        _ => {
                            let c = char::from(b);
                            return Err(ParseError::new(
                                start,
                                format!("unexpected character `{}`", c.escape_default()),
                            ));
                        }
                    };
                i += len;
                tok
            }
        };
        out.push(Token { tok, start, end: i });
    }
    out.push(Token {
        tok: Tok::Eof,
        start: src.len(),
        end: src.len(),
    });
    Ok(out)
}

fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Lexes `INT` or `DECIMAL` starting at `start` (a digit); returns the token and its end.
fn lex_number(src: &str, start: usize) -> Result<(Tok, usize), ParseError> {
    let bytes = src.as_bytes();
    let int_end = digits_end(bytes, start);
    let mut end = int_end;
    let is_decimal =
        bytes.get(int_end) == Some(&b'.') && bytes.get(int_end + 1).is_some_and(u8::is_ascii_digit);
    if is_decimal {
        end = digits_end(bytes, int_end + 1);
    }
    if bytes.get(end).is_some_and(|&b| is_ident_continue(b)) {
        let bad_end = (end..bytes.len())
            .find(|&j| !bytes.get(j).is_some_and(|&b| is_ident_continue(b)))
            .unwrap_or(bytes.len());
        return Err(ParseError::new(
            start,
            format!(
                "invalid number `{}` (only decimal digits are supported)",
                src.get(start..bad_end).unwrap_or("")
            ),
        ));
    }
    if int_end - start > 1 && bytes.get(start) == Some(&b'0') {
        return Err(ParseError::new(
            start,
            "numbers cannot have leading zeros (JavaScript would read them as octal)",
        ));
    }
    let text = src.get(start..end).unwrap_or("");
    let tok = if is_decimal {
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Tok::Float(f),
            _ => return Err(ParseError::new(start, "number is too large")),
        }
    } else {
        match text.parse::<i64>() {
            Ok(n) => Tok::Int(n),
            Err(_) => {
                return Err(ParseError::new(
                    start,
                    format!("integer is too large (the limit is {})", i64::MAX),
                ))
            }
        }
    };
    Ok((tok, end))
}

const SUPPORTED_ESCAPES: &str = r#"\\ \' \" \n \t \r"#;

/// Lexes a quoted string starting at `start` (the quote); returns its value and its end.
fn lex_string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let rest = src.get(start..).unwrap_or("");
    let mut chars = rest.char_indices();
    let quote = match chars.next() {
        Some((_, q)) => q,
        None => return Err(ParseError::new(start, "unterminated string")),
    };
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            return Ok((value, start + at + c.len_utf8()));
        }
        if c != '\\' {
            value.push(c);
            continue;
        }
        let unescaped = match chars.next() {
            Some((_, c @ ('\\' | '\'' | '"'))) => c,
            Some((_, 'n')) => '\n',
            Some((_, 't')) => '\t',
            Some((_, 'r')) => '\r',
            Some((_, other)) => {
                let message = format!(
                    "unsupported escape `\\{}` (supported: {SUPPORTED_ESCAPES})",
                    other.escape_default()
                );
                return Err(ParseError::new(start + at, message));
            }
            None => break,
        };
        value.push(unescaped);
    }
    Err(ParseError::new(
        start,
        format!("unterminated string: no closing {quote}"),
    ))
}

// ---------------------------------------------------------------------------------------------
// AST and parser
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    UserId,
    Tags,
    ClientVersion,
    OsName,
    OsVersion,
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
    In,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// The number of binary precedence levels; see [`BinOp::level`].
const LEVELS: usize = 6;

impl BinOp {
    /// Precedence level, 0 binding loosest.
    fn level(self) -> usize {
        match self {
            BinOp::Or => 0,
            BinOp::And => 1,
            BinOp::Eq | BinOp::Ne => 2,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge | BinOp::Contains | BinOp::In => 3,
            BinOp::Add | BinOp::Sub => 4,
            BinOp::Mul | BinOp::Div | BinOp::Rem => 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Lit(Lit),
    Var(Var),
    List(Vec<Lit>),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Version(Box<Expr>),
    /// `haystack.contains(needle)`.
    Contains(Box<Expr>, Box<Expr>),
    /// A left-associative run of operators of one precedence level, kept flat so that long
    /// chains (`a || b || c ...`) do not make the tree, or the evaluator's recursion, deep.
    Chain {
        first: Box<Expr>,
        rest: Vec<(BinOp, Expr)>,
    },
}

const KNOWN_NAMES: [&str; 9] = [
    "userId",
    "tags",
    "clientVersion",
    "osName",
    "osVersion",
    "version",
    "true",
    "false",
    "null",
];

/// Recursive descent with one function per precedence level ([`Parser::parse_binary`]); the
/// recursion is bounded because every construct that nests counts against [`MAX_DEPTH`].
struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token>,
    eof: Token,
    pos: usize,
    depth: usize,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str, tokens: Vec<Token>) -> Self {
        Parser {
            src,
            tokens,
            eof: Token {
                tok: Tok::Eof,
                start: src.len(),
                end: src.len(),
            },
            pos: 0,
            depth: 0,
        }
    }

    fn peek(&self) -> &Token {
        self.tokens.get(self.pos).unwrap_or(&self.eof)
    }

    fn bump(&mut self) {
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
    }

    fn text(&self, token: &Token) -> &'s str {
        self.src.get(token.start..token.end).unwrap_or("")
    }

    /// A token for an error message: its text in backquotes, shortened if long.
    fn describe(&self, token: &Token) -> String {
        if token.tok == Tok::Eof {
            return "end of input".to_owned();
        }
        let text = self.text(token);
        match text.char_indices().nth(24) {
            Some((cut, _)) => format!("`{}...`", text.get(..cut).unwrap_or("")),
            None => format!("`{text}`"),
        }
    }

    fn enter(&mut self, offset: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::new(
                offset,
                format!("condition nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn parse_expr(&mut self) -> Result<Expr, ParseError> {
        self.parse_binary(0)
    }

    fn binop(&self, level: usize) -> Option<BinOp> {
        let token = self.peek();
        let op = match token.tok {
            Tok::OrOr => BinOp::Or,
            Tok::AndAnd => BinOp::And,
            Tok::EqEq => BinOp::Eq,
            Tok::NotEq => BinOp::Ne,
            Tok::Lt => BinOp::Lt,
            Tok::Le => BinOp::Le,
            Tok::Gt => BinOp::Gt,
            Tok::Ge => BinOp::Ge,
            Tok::Plus => BinOp::Add,
            Tok::Minus => BinOp::Sub,
            Tok::Star => BinOp::Mul,
            Tok::Slash => BinOp::Div,
            Tok::Percent => BinOp::Rem,
            Tok::Ident => match self.text(token) {
                "contains" => BinOp::Contains,
                "in" => BinOp::In,
                _ => return None,
            },
            _ => return None,
        };
        (op.level() == level).then_some(op)
    }

    fn parse_binary(&mut self, level: usize) -> Result<Expr, ParseError> {
        if level >= LEVELS {
            return self.parse_unary();
        }
        let first = self.parse_binary(level + 1)?;
        let mut rest = Vec::new();
        while let Some(op) = self.binop(level) {
            self.bump();
            let rhs = self.parse_binary(level + 1)?;
            rest.push((op, rhs));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Chain {
                first: Box::new(first),
                rest,
            }
        })
    }

    fn parse_unary(&mut self) -> Result<Expr, ParseError> {
        let token = self.peek();
        let (start, negate) = match token.tok {
            Tok::Bang => (token.start, false),
            Tok::Minus => (token.start, true),
            _ => return self.parse_postfix(),
        };
        self.bump();
        self.enter(start)?;
        let operand = Box::new(self.parse_unary()?);
        self.leave();
        Ok(if negate {
            Expr::Neg(operand)
        } else {
            Expr::Not(operand)
        })
    }

    fn parse_postfix(&mut self) -> Result<Expr, ParseError> {
        let mut expr = self.parse_primary()?;
        let mut entered = 0;
        while self.peek().tok == Tok::Dot {
            let dot = self.peek().start;
            self.bump();
            let name_token = self.peek().clone();
            if name_token.tok != Tok::Ident {
                return Err(ParseError::new(
                    name_token.start,
                    format!(
                        "expected a method name after `.`, found {}",
                        self.describe(&name_token)
                    ),
                ));
            }
            let name = self.text(&name_token);
            if name != "contains" {
                return Err(ParseError::new(
                    name_token.start,
                    format!("unknown method `{name}`; the only method is `contains(...)`"),
                ));
            }
            self.bump();
            self.enter(dot)?;
            entered += 1;
            let needle = self.parse_call_argument(name)?;
            expr = Expr::Contains(Box::new(expr), Box::new(needle));
        }
        self.depth = self.depth.saturating_sub(entered);
        Ok(expr)
    }

    /// Parses `( expr )` after the name of a function or method taking one argument.
    fn parse_call_argument(&mut self, name: &str) -> Result<Expr, ParseError> {
        let open = self.peek().clone();
        if open.tok != Tok::LParen {
            return Err(ParseError::new(
                open.start,
                format!(
                    "`{name}` must be called with one argument, as in `{name}(...)`; found {}",
                    self.describe(&open)
                ),
            ));
        }
        self.bump();
        if self.peek().tok == Tok::RParen {
            return Err(ParseError::new(
                self.peek().start,
                format!("`{name}` takes exactly one argument"),
            ));
        }
        let argument = self.parse_expr()?;
        let close = self.peek();
        match close.tok {
            Tok::RParen => {
                self.bump();
                Ok(argument)
            }
            Tok::Comma => Err(ParseError::new(
                close.start,
                format!("`{name}` takes exactly one argument"),
            )),
            _ => Err(ParseError::new(
                close.start,
                format!(
                    "expected `)` to close the call of `{name}` at byte {}, found {}",
                    open.start,
                    self.describe(close)
                ),
            )),
        }
    }

    fn parse_primary(&mut self) -> Result<Expr, ParseError> {
        let token = self.peek().clone();
        let start = token.start;
        match token.tok {
            Tok::Int(n) => {
                self.bump();
                Ok(Expr::Lit(Lit::Int(n)))
            }
            Tok::Float(f) => {
                self.bump();
                Ok(Expr::Lit(Lit::Float(f)))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Expr::Lit(Lit::Str(s)))
            }
            Tok::Ident => {
                self.bump();
                self.parse_name(self.text(&token), start)
            }
            Tok::LParen => {
                self.bump();
                self.enter(start)?;
                let inner = self.parse_expr()?;
                let close = self.peek();
                if close.tok != Tok::RParen {
                    return Err(ParseError::new(
                        close.start,
                        format!(
                            "expected `)` to close the `(` at byte {start}, found {}",
                            self.describe(close)
                        ),
                    ));
                }
                self.bump();
                self.leave();
                Ok(inner)
            }
            Tok::LBracket => {
                self.bump();
                self.enter(start)?;
                let items = self.parse_list_items(start)?;
                self.leave();
                Ok(Expr::List(items))
            }
            _ => Err(ParseError::new(
                start,
                format!("expected an expression, found {}", self.describe(&token)),
            )),
        }
    }

    /// An identifier in expression position (already consumed).
    fn parse_name(&mut self, name: &str, start: usize) -> Result<Expr, ParseError> {
        let expr = match name {
            "true" => Expr::Lit(Lit::Bool(true)),
            "false" => Expr::Lit(Lit::Bool(false)),
            "null" => Expr::Lit(Lit::Null),
            "userId" => Expr::Var(Var::UserId),
            "tags" => Expr::Var(Var::Tags),
            "clientVersion" => Expr::Var(Var::ClientVersion),
            "osName" => Expr::Var(Var::OsName),
            "osVersion" => Expr::Var(Var::OsVersion),
            "version" => {
                self.enter(start)?;
                let argument = self.parse_call_argument(name)?;
                self.leave();
                return Ok(Expr::Version(Box::new(argument)));
            }
            "contains" | "in" => {
                return Err(ParseError::new(
                    start,
                    format!("expected an expression before the operator `{name}`"),
                ))
            }
            _ => {
                let hint = KNOWN_NAMES
                    .iter()
                    .find(|known| known.eq_ignore_ascii_case(name))
                    .map(|known| format!(" (did you mean `{known}`?)"))
                    .unwrap_or_default();
                return Err(ParseError::new(
                    start,
                    format!(
                        "unknown identifier `{name}`{hint}; a condition can use userId, tags, \
                         clientVersion, osName, osVersion, version(...), true, false and null"
                    ),
                ));
            }
        };
        if self.peek().tok == Tok::LParen {
            return Err(ParseError::new(
                self.peek().start,
                format!("`{name}` is not a function; the only function is `version(...)`"),
            ));
        }
        Ok(expr)
    }

    /// The elements of a list literal after its `[` (at `open`), through the closing `]`.
    fn parse_list_items(&mut self, open: usize) -> Result<Vec<Lit>, ParseError> {
        let mut items = Vec::new();
        if self.peek().tok == Tok::RBracket {
            self.bump();
            return Ok(items);
        }
        loop {
            items.push(self.parse_list_item()?);
            let next = self.peek();
            match next.tok {
                Tok::Comma => self.bump(),
                Tok::RBracket => {
                    self.bump();
                    return Ok(items);
                }
                _ => {
                    return Err(ParseError::new(
                        next.start,
                        format!(
                            "expected `,` or `]` in the list opened at byte {open}, found {}",
                            self.describe(next)
                        ),
                    ))
                }
            }
        }
    }

    fn parse_list_item(&mut self) -> Result<Lit, ParseError> {
        let token = self.peek().clone();
        let lit = match &token.tok {
            Tok::Minus => {
                self.bump();
                let number = self.peek().clone();
                let negated = match number.tok {
                    Tok::Int(n) => n.checked_neg().map(Lit::Int),
                    Tok::Float(f) => Some(Lit::Float(-f)),
                    _ => None,
                };
                return match negated {
                    Some(lit) => {
                        self.bump();
                        Ok(lit)
                    }
                    None => Err(ParseError::new(
                        number.start,
                        format!(
                            "expected a number after `-` in a list, found {}",
                            self.describe(&number)
                        ),
                    )),
                };
            }
            Tok::Int(n) => Lit::Int(*n),
            Tok::Float(f) => Lit::Float(*f),
            Tok::Str(s) => Lit::Str(s.clone()),
            Tok::Ident if self.text(&token) == "true" => Lit::Bool(true),
            Tok::Ident if self.text(&token) == "false" => Lit::Bool(false),
            Tok::Ident if self.text(&token) == "null" => Lit::Null,
            _ => {
                return Err(ParseError::new(
                    token.start,
                    format!(
                        "list elements must be literals (strings, numbers, true, false or \
                         null); found {}",
                        self.describe(&token)
                    ),
                ))
            }
        };
        self.bump();
        Ok(lit)
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluator
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    /// Always finite, or NaN.
    Float(f64),
}

const NAN: Num = Num::Float(f64::NAN);

impl Num {
    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

#[derive(Debug, Clone)]
enum Value<'a> {
    Null,
    Bool(bool),
    Num(Num),
    Str(Cow<'a, str>),
    /// The raw tags string; its items are split out lazily by [`tag_items`].
    Tags(&'a str),
    List(&'a [Lit]),
    /// The text of a valid version string (see [`version_core`]).
    Version(Cow<'a, str>),
}

impl Lit {
    fn value(&self) -> Value<'_> {
        match self {
            Lit::Null => Value::Null,
            Lit::Bool(b) => Value::Bool(*b),
            Lit::Int(i) => Value::Num(Num::Int(*i)),
            Lit::Float(f) => Value::Num(Num::Float(*f)),
            Lit::Str(s) => Value::Str(Cow::Borrowed(s)),
        }
    }
}

fn tag_items(raw: &str) -> impl Iterator<Item = &str> {
    raw.split(',').map(str::trim).filter(|t| !t.is_empty())
}

fn eval<'a>(expr: &'a Expr, input: &ConditionInput<'a>) -> Value<'a> {
    match expr {
        Expr::Lit(lit) => lit.value(),
        Expr::Var(var) => {
            let text = match var {
                Var::UserId => Some(input.user_id),
                Var::Tags => return input.tags.map_or(Value::Null, Value::Tags),
                Var::ClientVersion => input.client_version,
                Var::OsName => input.os_name,
                Var::OsVersion => input.os_version,
            };
            text.map_or(Value::Null, |s| Value::Str(Cow::Borrowed(s)))
        }
        Expr::List(items) => Value::List(items),
        Expr::Not(operand) => Value::Bool(!truthy(&eval(operand, input))),
        Expr::Neg(operand) => Value::Num(match to_number(&eval(operand, input)) {
            Num::Int(i) => i.checked_neg().map_or(NAN, Num::Int),
            Num::Float(f) => Num::Float(-f),
        }),
        Expr::Version(operand) => match eval(operand, input) {
            Value::Str(s) | Value::Version(s) if version_core(&s).is_some() => Value::Version(s),
            _ => Value::Num(NAN),
        },
        Expr::Contains(haystack, needle) => {
            let haystack = eval(haystack, input);
            Value::Bool(contains(&haystack, &eval(needle, input)))
        }
        Expr::Chain { first, rest } => {
            let mut acc = eval(first, input);
            for (op, rhs) in rest {
                acc = match op {
                    BinOp::And if !truthy(&acc) => acc,
                    BinOp::Or if truthy(&acc) => acc,
                    BinOp::And | BinOp::Or => eval(rhs, input),
                    _ => binary(*op, acc, eval(rhs, input)),
                };
            }
            acc
        }
    }
}

/// A non-short-circuit binary operator applied to evaluated operands.
fn binary<'a>(op: BinOp, a: Value<'a>, b: Value<'a>) -> Value<'a> {
    let ordered = |accept: fn(Ordering) -> bool| Value::Bool(compare(&a, &b).is_some_and(accept));
    match op {
        BinOp::And => {
            if truthy(&a) {
                b
            } else {
                a
            }
        }
        BinOp::Or => {
            if truthy(&a) {
                a
            } else {
                b
            }
        }
        BinOp::Eq => Value::Bool(loose_eq(&a, &b)),
        BinOp::Ne => Value::Bool(!loose_eq(&a, &b)),
        BinOp::Lt => ordered(Ordering::is_lt),
        BinOp::Le => ordered(Ordering::is_le),
        BinOp::Gt => ordered(Ordering::is_gt),
        BinOp::Ge => ordered(Ordering::is_ge),
        BinOp::Contains => Value::Bool(contains(&a, &b)),
        BinOp::In => Value::Bool(contains(&b, &a)),
        BinOp::Add => add(a, b),
        BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
            Value::Num(arith(op, to_number(&a), to_number(&b)))
        }
    }
}

fn truthy(value: &Value<'_>) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Num(Num::Int(i)) => *i != 0,
        Value::Num(Num::Float(f)) => *f != 0.0 && !f.is_nan(),
        Value::Str(s) => !s.is_empty(),
        Value::Tags(_) | Value::List(_) | Value::Version(_) => true,
    }
}

fn to_number(value: &Value<'_>) -> Num {
    match value {
        Value::Num(n) => *n,
        Value::Str(s) => str_to_number(s),
        _ => NAN,
    }
}

/// `-?digits` as an `i64`, `-?digits.digits` as an `f64`, anything else NaN.
fn str_to_number(s: &str) -> Num {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    match unsigned.split_once('.') {
        None if all_digits(unsigned) => s.parse().map_or(NAN, Num::Int),
        Some((int, frac)) if all_digits(int) && all_digits(frac) => match s.parse::<f64>() {
            Ok(f) if f.is_finite() => Num::Float(f),
            _ => NAN,
        },
        _ => NAN,
    }
}

fn arith(op: BinOp, a: Num, b: Num) -> Num {
    let (x, y) = match (a, b) {
        (Num::Int(x), Num::Int(y)) => (x, y),
        _ => return float_arith(op, a.as_f64(), b.as_f64()),
    };
    let result = match op {
        BinOp::Add => x.checked_add(y),
        BinOp::Sub => x.checked_sub(y),
        BinOp::Mul => x.checked_mul(y),
        BinOp::Div => match x.checked_rem(y) {
            Some(0) => x.checked_div(y),
            // Inexact: JavaScript gives a fraction.
            Some(_) => return float_arith(op, x as f64, y as f64),
            // By zero, or i64::MIN / -1.
            None => None,
        },
        // i64::MIN % -1 is 0 even though checked_rem calls it an overflow.
        BinOp::Rem if y == -1 => Some(0),
        BinOp::Rem => x.checked_rem(y),
        _ => None,
    };
    result.map_or(NAN, Num::Int)
}

fn float_arith(op: BinOp, x: f64, y: f64) -> Num {
    let result = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div if y == 0.0 => f64::NAN,
        BinOp::Div => x / y,
        BinOp::Rem => x % y,
        _ => f64::NAN,
    };
    if result.is_finite() {
        Num::Float(result)
    } else {
        NAN
    }
}

/// Exact numeric order; `None` when either side is NaN.
fn num_cmp(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
        (Num::Int(x), Num::Float(y)) => int_float_cmp(x, y),
        (Num::Float(x), Num::Int(y)) => int_float_cmp(y, x).map(Ordering::reverse),
    }
}

/// Compares an `i64` with an `f64` without the rounding of `i as f64` deciding the answer.
fn int_float_cmp(i: i64, f: f64) -> Option<Ordering> {
    // Rounding is monotonic and `f` is representable, so a strict answer here is exact; when
    // the rounded value ties, `f` is an integer no larger than 2^63 in magnitude and fits i128.
    match (i as f64).partial_cmp(&f)? {
        Ordering::Equal => Some(i128::from(i).cmp(&(f as i128))),
        unequal => Some(unequal),
    }
}

fn compare(a: &Value<'_>, b: &Value<'_>) -> Option<Ordering> {
    match (a, b) {
        (Value::Num(x), Value::Num(y)) => num_cmp(*x, *y),
        (Value::Str(x), Value::Str(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Value::Num(x), Value::Str(y)) => num_cmp(*x, str_to_number(y)),
        (Value::Str(x), Value::Num(y)) => num_cmp(str_to_number(x), *y),
        (Value::Version(x), Value::Version(y) | Value::Str(y))
        | (Value::Str(x), Value::Version(y)) => version_cmp(x, y),
        _ => None,
    }
}

fn loose_eq(a: &Value<'_>, b: &Value<'_>) -> bool {
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

fn contains(haystack: &Value<'_>, needle: &Value<'_>) -> bool {
    match (haystack, needle) {
        (Value::Tags(raw), Value::Str(n)) => tag_items(raw).any(|tag| tag == n.as_ref()),
        (Value::List(items), n) => items.iter().any(|item| loose_eq(&item.value(), n)),
        (Value::Str(h), Value::Str(n)) => h.contains(n.as_ref()),
        _ => false,
    }
}

fn add<'a>(a: Value<'a>, b: Value<'a>) -> Value<'a> {
    if !matches!(a, Value::Str(_)) && !matches!(b, Value::Str(_)) {
        return Value::Num(arith(BinOp::Add, to_number(&a), to_number(&b)));
    }
    // Appending to an owned left operand keeps `a + b + c + ...` linear.
    let mut out = match a {
        Value::Str(s) => s.into_owned(),
        other => {
            let mut out = String::new();
            write_value(&other, &mut out);
            out
        }
    };
    write_value(&b, &mut out);
    Value::Str(Cow::Owned(out))
}

/// Appends a value as JavaScript's `String(value)` would write it.
fn write_value(value: &Value<'_>, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Num(n) => write_number(*n, out),
        Value::Str(s) | Value::Version(s) => out.push_str(s),
        Value::Tags(raw) => {
            for (i, tag) in tag_items(raw).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(tag);
            }
        }
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // JavaScript writes null array elements as nothing.
                if *item != Lit::Null {
                    write_value(&item.value(), out);
                }
            }
        }
    }
}

fn write_number(n: Num, out: &mut String) {
    match n {
        Num::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Num::Float(f) if f.is_nan() => out.push_str("NaN"),
        Num::Float(0.0) => out.push('0'),
        Num::Float(f) => {
            let _ = write!(out, "{f}");
        }
    }
}

/// The dotted-digits part of a version string, if it is one: `digits ("." digits)*`, then
/// optionally a suffix from the first `-` or `+` on, which is ignored.
fn version_core(s: &str) -> Option<&str> {
    let core = s.split(['-', '+']).next().unwrap_or("");
    let valid = core
        .split('.')
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    valid.then_some(core)
}

/// Component-wise version order; missing components are 0. `None` if either is not a version.
fn version_cmp(a: &str, b: &str) -> Option<Ordering> {
    let (mut xs, mut ys) = (version_core(a)?.split('.'), version_core(b)?.split('.'));
    loop {
        let (x, y) = match (xs.next(), ys.next()) {
            (None, None) => return Some(Ordering::Equal),
            (x, y) => (x.unwrap_or("0"), y.unwrap_or("0")),
        };
        // Digit strings of any length, compared as numbers without parsing them.
        let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
        match x.len().cmp(&y.len()).then_with(|| x.cmp(y)) {
            Ordering::Equal => {}
            unequal => return Some(unequal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input(user_id: &str) -> ConditionInput<'_> {
        ConditionInput {
            user_id,
            tags: None,
            client_version: None,
            os_name: None,
            os_version: None,
        }
    }

    /// A connection with every field but `osVersion` set.
    fn full() -> ConditionInput<'static> {
        ConditionInput {
            user_id: "1019",
            tags: Some(" vip, tag-10 ,,beta,"),
            client_version: Some("2.10.3"),
            os_name: Some("Android"),
            os_version: None,
        }
    }

    fn check(src: &str, input: &ConditionInput<'_>) -> bool {
        match Condition::parse(src) {
            Ok(condition) => condition.matches(input),
            Err(e) => panic!("{src:?} failed to parse: {e}"),
        }
    }

    fn check_table(table: &[(&str, bool)], input: &ConditionInput<'_>) {
        for &(src, expected) in table {
            assert_eq!(check(src, input), expected, "{src}");
        }
    }

    fn parse_err(src: &str) -> ParseError {
        match Condition::parse(src) {
            Ok(c) => panic!("{src:?} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn arithmetic_and_precedence() {
        check_table(
            &[
                ("1 + 2 * 3 == 7", true),
                ("(1 + 2) * 3 == 9", true),
                ("10 - 2 - 3 == 5", true),
                ("100 / 10 / 5 == 2", true),
                ("2 * 3 % 4 == 2", true),
                ("7 % 3 == 1", true),
                ("-7 % 3 == -1", true),
                ("7 / 2 == 3.5", true),
                ("-3 + 5 == 2", true),
                ("- -3 == 3", true),
                ("-(2 + 3) == -5", true),
                ("0.5 + 0.5 == 1", true),
                ("0.1 + 0.2 == 0.3", false),
                ("1.5 * 2 == 3", true),
                ("7.5 % 2 == 1.5", true),
                ("9007199254740993 > 9007199254740992.0", true),
                ("9007199254740993 == 9007199254740992.0", false),
                ("9007199254740992 == 9007199254740992.0", true),
                ("!(userId % 2 == 0) || false", true),
                ("true || false && false", true),
                ("false && true || true", true),
                ("(false && true) || true", true),
                ("false && (true || true)", false),
                ("1 < 2 == true", true),
                ("!true == false", true),
                ("!!1", true),
                ("!!0", false),
                ("1 + 1 + 1 + 1 + 1 == 5", true),
            ],
            &full(),
        );
    }

    #[test]
    fn comparisons_and_equality() {
        check_table(
            &[
                ("1 < 2", true),
                ("2 <= 2", true),
                ("3 > 2", true),
                ("2 >= 3", false),
                ("1 != 2", true),
                ("1 === 1", true),
                ("1 !== 1", false),
                ("'abc' < 'abd'", true),
                ("'b' > 'abc'", true),
                ("'10' < '9'", true),
                ("'10' < 9", false),
                ("10 > '9'", true),
                ("'12' == 12", true),
                ("'12' === 12", true),
                ("'012' == 12", true),
                ("'a' == 'a'", true),
                ("\"a\" == 'a'", true),
                ("'a' != 'b'", true),
                ("'a' == 1", false),
                ("true == true", true),
                ("true == 1", false),
                ("'true' == true", false),
                ("null == null", true),
                ("null == 0", false),
                ("null != 0", true),
                ("null < 1", false),
                ("null >= null", false),
                ("[1] == [1]", false),
                ("tags == tags", false),
            ],
            &full(),
        );
    }

    #[test]
    fn result_must_be_boolean_true() {
        check_table(
            &[
                ("true", true),
                ("false", false),
                ("1", false),
                ("'true'", false),
                ("null", false),
                ("userId", false),
                ("tags", false),
                ("osVersion || 'x'", false),
                ("(osVersion || 'x') == 'x'", true),
                ("osName && true", true),
                ("osName && osName.contains('And')", true),
                ("osVersion && true", false),
                ("!osVersion", true),
                ("!tags", false),
                ("!''", true),
                ("!'0'", false),
                ("![]", false),
            ],
            &full(),
        );
    }

    #[test]
    fn variables() {
        check_table(
            &[
                ("userId == '1019'", true),
                ("userId == 1019", true),
                ("osName == 'Android'", true),
                ("osName == 'android'", false),
                ("clientVersion == '2.10.3'", true),
                ("osVersion == null", true),
                ("clientVersion == null", false),
                ("clientVersion != null", true),
                ("tags != null", true),
            ],
            &full(),
        );
        check_table(
            &[
                ("clientVersion == null", true),
                ("osName == null", true),
                ("osVersion == null", true),
                ("tags == null", true),
                ("tags contains 'vip'", false),
                ("osName.contains('a')", false),
                ("osName < 'z'", false),
                ("userId == ''", true),
            ],
            &input(""),
        );
        // An empty tags string is an empty list, not null.
        let empty_tags = ConditionInput {
            tags: Some(""),
            ..input("1")
        };
        check_table(
            &[("tags == null", false), ("tags contains ''", false)],
            &empty_tags,
        );
    }

    #[test]
    fn contains_and_in() {
        check_table(
            &[
                ("tags contains 'vip'", true),
                ("tags.contains('vip')", true),
                ("tags.contains('tag-10')", true),
                ("tags.contains('tag-1')", false),
                ("tags contains 'beta'", true),
                ("tags contains ' vip'", false),
                ("tags contains ''", false),
                ("tags contains 10", false),
                ("'vip' in tags", true),
                ("'vi' in tags", false),
                ("osName.contains('droid')", true),
                ("osName contains 'android'", false),
                ("userId.contains('01')", true),
                ("userId.contains(1)", false),
                ("osVersion.contains('1')", false),
                ("osName in ['Android', 'iOS']", true),
                ("osName in ['ios']", false),
                ("userId in [1019, 2000]", true),
                ("userId in [-1, 2.5, null, true]", false),
                ("null in [null]", true),
                ("5 in []", false),
                ("['a', 'b'].contains('b')", true),
                ("'droid' in osName", true),
                ("tags.contains('vip').contains('x')", false),
                ("tags contains 'vip' == true", true),
                ("!tags.contains('vip')", false),
            ],
            &full(),
        );
    }

    #[test]
    fn concatenation() {
        check_table(
            &[
                ("'a' + 'b' == 'ab'", true),
                ("userId + 1 == '10191'", true),
                ("1 + 2 + 'x' == '3x'", true),
                ("'x' + 1 + 2 == 'x12'", true),
                ("null + 'a' == 'nulla'", true),
                ("true + '' == 'true'", true),
                ("1.5 + '' == '1.5'", true),
                ("(0 / 0) + '' == 'NaN'", true),
                ("tags + '' == 'vip,tag-10,beta'", true),
                ("[1, null, 'a'] + '' == '1,,a'", true),
                ("version(clientVersion) + '' == '2.10.3'", true),
                ("null + 1 > 0", false),
            ],
            &full(),
        );
    }

    #[test]
    fn string_escapes() {
        check_table(
            &[
                (r#"'it\'s' == "it's""#, true),
                (r#""say \"hi\"" == 'say "hi"'"#, true),
                (r"'a\\b'.contains('\\')", true),
                (r"'a\\b' == 'a' + '\\' + 'b'", true),
                (r"'\n' != 'n'", true),
                (r"'\t\r\n'.contains('\r')", true),
                ("'\"' == \"\\\"\"", true),
                ("'日本' == \"日本\"", true),
            ],
            &full(),
        );
    }

    #[test]
    fn not_a_number() {
        let alice = input("alice");
        check_table(
            &[
                ("userId % 100 < 20", false),
                ("userId % 100 >= 20", false),
                ("userId % 100 == userId % 100", false),
                ("userId % 100 != userId % 100", true),
                ("!(userId % 100)", true),
                ("-userId < 0", false),
            ],
            &alice,
        );
        assert!(!check("userId % 100 < 20", &input("12345")));
        assert!(check("userId % 100 == 45", &input("12345")));
        assert!(check("userId % 100 < 20", &input("1019")));
        assert!(check("userId % 100 == 7", &input("007")));
        assert!(check("userId % 10 == -3", &input("-13")));
        assert!(!check("userId % 100 < 20", &input("")));
        assert!(!check("userId % 100 < 20", &input(" 10")));
        assert!(!check("userId % 100 < 20", &input("+10")));
        assert!(!check("userId % 100 < 20", &input("1e2")));
        assert!(!check("userId % 100 == 99", &input("99999999999999999999")));
        assert!(check("userId * 2 == 5", &input("2.5")));
    }

    #[test]
    fn division_by_zero_and_overflow() {
        check_table(
            &[
                ("1 / 0 > 0", false),
                ("1 / 0 < 0", false),
                ("1 / 0 == 1 / 0", false),
                ("0 / 0 != 0 / 0", true),
                ("userId % 0 == 0", false),
                ("1.5 / 0 > 0", false),
                ("1.5 % 0 > 0", false),
                ("-9223372036854775807 - 1 < 0", true),
                ("-9223372036854775807 - 1 - 1 < 0", false),
                ("-(-9223372036854775807 - 1) > 0", false),
                ("(-9223372036854775807 - 1) % -1 == 0", true),
                ("(-9223372036854775807 - 1) / -1 > 0", false),
                ("9223372036854775807 + 1 > 0", false),
                ("3037000500 * 3037000500 > 0", false),
            ],
            &full(),
        );
        let max = input("9223372036854775807");
        check_table(
            &[
                ("userId * 2 > 0", false),
                ("userId * 2 < 0", false),
                ("userId * 2 != userId * 2", true),
                ("userId * 1 == 9223372036854775807", true),
                ("userId - -1 > 0", false),
                ("userId - 1 == 9223372036854775806", true),
                // `+` with a string concatenates, and the result is too large for an i64.
                ("userId + 1 > 0", false),
            ],
            &max,
        );
    }

    #[test]
    fn versions() {
        check_table(
            &[
                ("version(clientVersion) >= version('2.9')", true),
                ("clientVersion >= '2.9'", false),
                ("version(clientVersion) > '2.10.2'", true),
                ("'2.10.4' > version(clientVersion)", true),
                ("version(clientVersion) == '2.10.3.0'", true),
                ("version('2.1') == version('2.1.0')", true),
                ("version('2.1.0-beta') == '2.1'", true),
                ("version('2.1+build.7') == '2.1'", true),
                ("version('1.02') == '1.2'", true),
                ("version('10.0') > version('9.9.9')", true),
                (
                    "version('99999999999999999999999.1') > '99999999999999999999998'",
                    true,
                ),
                ("version('abc') == version('abc')", false),
                ("version('abc') != '1'", true),
                ("version('1.') == '1'", false),
                ("version('.1') == '0.1'", false),
                ("version('') == ''", false),
                ("version('-1') == '0'", false),
                ("version(osVersion) < '1'", false),
                ("version(2) == '2'", false),
                ("version(version('1.2')) == '1.2'", true),
                ("version('1.2') < 'x'", false),
                ("version('1.2') < 2", false),
            ],
            &full(),
        );
    }

    #[test]
    fn whitespace_and_layout() {
        check_table(
            &[
                ("userId%2==1", true),
                ("\tuserId\n%\r2 == 1 ", true),
                ("userId\u{3000}== '1019'", true),
                ("tags.contains ( 'vip' )", true),
                ("osName in['Android']", true),
            ],
            &full(),
        );
    }

    #[test]
    fn source_and_from_str() {
        let condition: Condition = " userId % 100 < 20 ".parse().unwrap();
        assert_eq!(condition.source(), " userId % 100 < 20 ");
        assert_eq!(condition, Condition::parse(" userId % 100 < 20 ").unwrap());
        assert!(condition.matches(&input("1019")));
        let err = "foo".parse::<Condition>().unwrap_err();
        assert!(err
            .to_string()
            .starts_with("condition parse error at byte 0: "));
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "empty"),
            ("   \n ", 0, "empty"),
            ("'abc", 0, "unterminated"),
            ("userId == \"abc", 10, "unterminated"),
            ("'abc\\'", 0, "unterminated"),
            ("foo == 1", 0, "`foo`"),
            ("userid == 1", 0, "did you mean `userId`"),
            ("userId == 1 && bar", 15, "`bar`"),
            ("userId == 1 )", 12, "unexpected `)`"),
            ("userId == 1 userId", 12, "after the end"),
            ("userId = 1", 7, "=="),
            ("userId & 1", 7, "&&"),
            ("userId | 1", 7, "||"),
            ("userId.length", 7, "unknown method `length`"),
            ("userId.", 7, "method name"),
            ("userId(1)", 6, "not a function"),
            ("version", 7, "version(...)"),
            ("version()", 8, "exactly one argument"),
            ("version(1, 2)", 9, "exactly one argument"),
            ("version(1", 9, "`)`"),
            ("tags.contains", 13, "contains(...)"),
            ("osName in [osName]", 11, "literals"),
            ("osName in ['a' 'b']", 15, "`,` or `]`"),
            ("osName in ['a',]", 15, "literals"),
            ("osName in [- 'a']", 13, "number after `-`"),
            ("osName in ['a'", 14, "`,` or `]`"),
            (r"'\q'", 1, "unsupported escape"),
            ("01 == 1", 0, "leading zeros"),
            ("1e5 > 1", 0, "`1e5`"),
            ("0x1F > 1", 0, "`0x1F`"),
            ("99999999999999999999 > 1", 0, "too large"),
            ("1 +", 3, "end of input"),
            ("(1", 2, "`)`"),
            ("()", 1, "found `)`"),
            ("@", 0, "unexpected character `@`"),
            ("userId == 1 # x", 12, "unexpected character `#`"),
            ("userId == 1 // x", 13, "expected an expression"),
            ("userId ≠ 1", 7, "`≠`"),
            ("contains 'a'", 0, "before the operator"),
            ("'a' in", 6, "end of input"),
            ("1 < < 2", 4, "found `<`"),
        ];
        for &(src, offset, needle) in cases {
            let err = parse_err(src);
            assert_eq!(err.offset, offset, "{src:?}: {err}");
            assert!(err.message.contains(needle), "{src:?}: {err}");
        }
    }

    #[test]
    fn long_tokens_are_shortened_in_messages() {
        let src = format!("true '{}'", "x".repeat(200));
        let err = parse_err(&src);
        assert_eq!(err.offset, 5);
        assert!(err.message.len() < 100, "{err}");
    }

    #[test]
    fn size_limit() {
        let just_fits = format!("true{}", " ".repeat(MAX_CONDITION_BYTES - 4));
        assert!(check(&just_fits, &full()));
        let too_long = format!("true{}", " ".repeat(MAX_CONDITION_BYTES - 3));
        let err = parse_err(&too_long);
        assert_eq!(err.offset, MAX_CONDITION_BYTES);
        assert!(err.message.contains("4096"), "{err}");
    }

    #[test]
    fn huge_nesting_is_an_error_not_a_stack_overflow() {
        let parens = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert!(parse_err(&parens).message.contains("limit"));
        let bangs = format!("{}true", "!".repeat(100_000));
        assert!(parse_err(&bangs).message.contains("limit"));
        let unclosed = "(".repeat(100_000);
        assert!(parse_err(&unclosed).message.contains("limit"));
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}true{}", "(".repeat(n), ")".repeat(n));
        assert!(check(&nested(MAX_DEPTH), &full()));
        let err = parse_err(&nested(MAX_DEPTH + 1));
        assert_eq!(err.offset, MAX_DEPTH);
        assert!(err.message.contains("deeper than 64"), "{err}");
        assert!(parse_err(&nested(2000)).message.contains("deeper"));

        assert!(check(&format!("{}true", "!".repeat(MAX_DEPTH)), &full()));
        let err = parse_err(&format!("{}true", "!".repeat(2000)));
        assert_eq!(err.offset, MAX_DEPTH);
        assert!(check(&format!("{}1 == 1", "- ".repeat(MAX_DEPTH)), &full()));
        assert!(parse_err(&format!("{}1", "-".repeat(MAX_DEPTH + 1)))
            .message
            .contains("deeper"));

        let lists = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse_err(&lists).message.contains("literals"));
        let versions = format!("{}'1'{}", "version(".repeat(100), ")".repeat(100));
        assert!(parse_err(&versions).message.contains("deeper"));
        let methods = format!("tags{}", ".contains('a')".repeat(100));
        assert!(parse_err(&methods).message.contains("deeper"));
        let methods = format!("tags{}", ".contains('a')".repeat(MAX_DEPTH));
        assert!(!check(&methods, &full()));
    }

    #[test]
    fn long_flat_chains_are_not_nesting() {
        let sum = format!("0{} == 1000", " + 1".repeat(1000));
        assert!(sum.len() <= MAX_CONDITION_BYTES);
        assert!(check(&sum, &full()));
        let ors = format!(
            "{}tags contains 'beta'",
            "tags contains 'x' || ".repeat(150)
        );
        assert!(ors.len() <= MAX_CONDITION_BYTES);
        assert!(check(&ors, &full()));
        let ands = format!("{}false", "true && ".repeat(500));
        assert!(!check(&ands, &full()));
    }

    /// The deepest condition the limits allow parses, evaluates and drops on a small stack.
    #[test]
    fn deepest_condition_fits_a_small_stack() {
        let mut src = String::from("userId");
        for _ in 0..MAX_DEPTH / 2 {
            src = format!("(false || true && 1 == 1 < 2 + 3 * -{src})");
        }
        assert!(src.len() <= MAX_CONDITION_BYTES);
        let thread = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let condition = Condition::parse(&src).unwrap();
                let matched = condition.matches(&input("7"));
                drop(condition);
                matched
            })
            .unwrap();
        assert!(!thread.join().unwrap());
    }

    // ----- property tests -----

    const SOUP: &[&str] = &[
        "(",
        ")",
        "[",
        "]",
        "!",
        "-",
        "+",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "===",
        "!==",
        "<",
        "<=",
        ">",
        ">=",
        "&&",
        "||",
        ",",
        ".",
        "=",
        "&",
        "|",
        "contains",
        "in",
        "userId",
        "tags",
        "clientVersion",
        "osName",
        "osVersion",
        "version",
        "true",
        "false",
        "null",
        "foo",
        "0",
        "1",
        "07",
        "1.5",
        "1.",
        "9223372036854775807",
        "9223372036854775808",
        "'a'",
        "\"b\"",
        "'",
        "\"",
        "\\",
        "'\\",
        "1e3",
        " ",
        "\u{3000}",
        "é",
        "\u{0}",
    ];

    fn quote(s: &str) -> String {
        let mut out = String::from("'");
        for c in s.chars() {
            if c == '\\' || c == '\'' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
        out
    }

    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("true".to_owned()),
            Just("false".to_owned()),
            Just("null".to_owned()),
            (0i64..=i64::MAX).prop_map(|n| n.to_string()),
            (0i64..100).prop_map(|n| format!("-{n}")),
            (0u32..1000, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
            ".{0,8}".prop_map(|s| quote(&s)),
            "[0-9]{1,3}(\\.[0-9]{1,3}){0,2}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn well_formed() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            prop::sample::select(vec![
                "userId",
                "tags",
                "clientVersion",
                "osName",
                "osVersion",
            ])
            .prop_map(str::to_owned),
            literal(),
            prop::collection::vec(literal(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        ];
        let ops = vec![
            "||", "&&", "==", "!=", "===", "!==", "<", "<=", ">", ">=", "contains", "in", "+", "-",
            "*", "/", "%",
        ];
        leaf.prop_recursive(6, 64, 4, move |inner| {
            let op = prop::sample::select(ops.clone());
            prop_oneof![
                (inner.clone(), op.clone(), inner.clone())
                    .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
                (inner.clone(), op, inner.clone()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
                inner.clone().prop_map(|a| format!("!{a}")),
                inner.clone().prop_map(|a| format!("-{a}")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}.contains({b})")),
                inner.prop_map(|a| format!("version({a})")),
            ]
        })
    }

    #[derive(Debug, Clone)]
    struct OwnedInput {
        user_id: String,
        tags: Option<String>,
        client_version: Option<String>,
        os_name: Option<String>,
        os_version: Option<String>,
    }

    impl OwnedInput {
        fn borrow(&self) -> ConditionInput<'_> {
            ConditionInput {
                user_id: &self.user_id,
                tags: self.tags.as_deref(),
                client_version: self.client_version.as_deref(),
                os_name: self.os_name.as_deref(),
                os_version: self.os_version.as_deref(),
            }
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{0,25}",
            "-?[0-9]{1,20}(\\.[0-9]{1,3})?",
            ".{0,12}",
            "[0-9]{1,3}(\\.[0-9]{1,3}){0,3}(-beta)?",
            "[a-z ,]{0,20}",
        ]
    }

    fn owned_input() -> impl Strategy<Value = OwnedInput> {
        let opt = || prop::option::of(text());
        (text(), opt(), opt(), opt(), opt()).prop_map(
            |(user_id, tags, client_version, os_name, os_version)| OwnedInput {
                user_id,
                tags,
                client_version,
                os_name,
                os_version,
            },
        )
    }

    proptest! {
        #[test]
        fn parse_never_panics(src in ".*", data in owned_input()) {
            if let Ok(condition) = Condition::parse(&src) {
                let _ = condition.matches(&data.borrow());
            }
        }

        #[test]
        fn token_soup_never_panics(
            parts in prop::collection::vec(prop::sample::select(SOUP), 0..60),
            spaced in any::<bool>(),
            data in owned_input(),
        ) {
            let src = parts.join(if spaced { " " } else { "" });
            match Condition::parse(&src) {
                Ok(condition) => { let _ = condition.matches(&data.borrow()); }
                Err(e) => prop_assert!(e.offset <= src.len()),
            }
        }

        #[test]
        fn well_formed_conditions_parse_and_evaluate(
            src in well_formed(),
            data in prop::collection::vec(owned_input(), 1..4),
        ) {
            prop_assume!(src.len() <= MAX_CONDITION_BYTES);
            let condition = Condition::parse(&src);
            prop_assert!(condition.is_ok(), "{src}: {:?}", condition.err());
            if let Ok(condition) = condition {
                for d in &data {
                    let _ = condition.matches(&d.borrow());
                }
            }
        }

        #[test]
        fn sharding_agrees_with_reference(uid in any::<u64>(), m in 1u64..1000, k in 0u64..1000) {
            let condition = Condition::parse(&format!("userId % {m} < {k}")).unwrap();
            let expected = i64::try_from(uid).is_ok() && uid % m < k;
            prop_assert_eq!(condition.matches(&input(&uid.to_string())), expected);
        }

        #[test]
        fn string_literals_round_trip(s in ".*") {
            let src = format!("{} == {}", quote(&s), quote(&s));
            prop_assume!(src.len() <= MAX_CONDITION_BYTES);
            prop_assert!(check(&src, &input("")));
            let data = ConditionInput { os_name: Some(&s), ..input("") };
            let src = format!("osName == {}", quote(&s));
            prop_assert!(check(&src, &data));
        }

        #[test]
        fn versions_compare_component_wise(
            a in prop::collection::vec(0u32..20, 1..5),
            b in prop::collection::vec(0u32..20, 1..5),
        ) {
            let join = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(".");
            let pad = |v: &[u32]| {
                let mut v = v.to_vec();
                v.resize(5, 0);
                v
            };
            let src = format!("version('{}') < version('{}')", join(&a), join(&b));
            prop_assert_eq!(check(&src, &input("")), pad(&a) < pad(&b));
            let src = format!("version('{}') == '{}'", join(&a), join(&b));
            prop_assert_eq!(check(&src, &input("")), pad(&a) == pad(&b));
        }

        #[test]
        fn integer_arithmetic_agrees_with_i128(x in any::<i64>(), y in any::<i64>()) {
            let (xs, ys) = (x.to_string(), y.to_string());
            let (wx, wy) = (i128::from(x), i128::from(y));
            let cases = [
                ("userId - osName", i64::try_from(wx - wy).ok()),
                ("userId * osName", i64::try_from(wx * wy).ok()),
                ("userId * 1 + osName * 1", i64::try_from(wx + wy).ok()),
                ("userId % osName", x.checked_rem(y).or((y == -1).then_some(0))),
            ];
            for (expr, expected) in cases {
                // The expected value goes in through a variable: i64::MIN has no literal.
                let zs = expected.unwrap_or(0).to_string();
                let data = ConditionInput {
                    os_name: Some(&ys),
                    client_version: Some(&zs),
                    ..input(&xs)
                };
                let src = format!("{expr} == clientVersion");
                prop_assert_eq!(check(&src, &data), expected.is_some(), "{}", src);
            }
        }
    }
}
