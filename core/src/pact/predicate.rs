//! A small typed expression language over telemetry fields, compiled once per clause.
//!
//! ```text
//! citations.verified > 0            outcome == "refused"          latency_ms
//! pii_detected                      contains(tool_calls, "search") tool_calls[0]
//! attributes.judge_score >= 4 && risk != "low"                     len(tool_calls) > 2
//! model.version in ["v1", "v2"]     citations.verified / citations.total
//! ```
//!
//! Hand-written rather than CEL: clauses need a dozen operators over a fixed schema, static
//! type checking against that schema with located errors, and an allocation-free evaluator
//! on the hot path; the CEL crates bring a dynamic runtime for none of that.
//!
//! Missing optional fields evaluate to null. Comparisons and arithmetic with null give null;
//! `&&`, `||` and `!` follow Kleene's three-valued logic. A clause skips events whose metric
//! is null (e.g. a citation clause on an answer without citation data).

use crate::model::telemetry::{Attr, Telemetry};
use std::fmt;
use thiserror::Error;

/// A compile error, with its 1-based column in the expression.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("column {column}: {message}")]
pub struct ParseError {
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

/// The static type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// true/false.
    Bool,
    /// A number.
    Num,
    /// A string.
    Str,
    /// A list of strings (`tool_calls`).
    List,
    /// Known only at run time (`attributes.*`).
    Dyn,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Bool => "boolean",
            Type::Num => "number",
            Type::Str => "string",
            Type::List => "list",
            Type::Dyn => "attribute",
        })
    }
}

/// A value at run time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Val<'a> {
    /// Missing.
    Null,
    /// Boolean.
    Bool(bool),
    /// Number.
    Num(f64),
    /// String.
    Str(&'a str),
}

/// Telemetry fields an expression can read.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `event_id`
    EventId,
    /// `agent_id`
    AgentId,
    /// `workflow`
    Workflow,
    /// `model.provider`
    ModelProvider,
    /// `model.name`
    ModelName,
    /// `model.version`
    ModelVersion,
    /// `occurred_at` (microseconds)
    OccurredAt,
    /// `risk`
    Risk,
    /// `outcome`
    Outcome,
    /// `latency_ms`
    LatencyMs,
    /// `citations.total`
    CitationsTotal,
    /// `citations.verified`
    CitationsVerified,
    /// `pii_detected`
    PiiDetected,
    /// `tool_calls`
    ToolCalls,
    /// `attributes.NAME`
    Attribute(String),
}

/// Field names, for error messages and the pact schema.
pub const FIELDS: &[&str] = &[
    "event_id",
    "agent_id",
    "workflow",
    "model.provider",
    "model.name",
    "model.version",
    "occurred_at",
    "risk",
    "outcome",
    "latency_ms",
    "citations.total",
    "citations.verified",
    "pii_detected",
    "tool_calls",
    "attributes.<name>",
];

impl Field {
    fn parse(path: &str) -> Option<Field> {
        Some(match path {
            "event_id" => Field::EventId,
            "agent_id" => Field::AgentId,
            "workflow" => Field::Workflow,
            "model.provider" => Field::ModelProvider,
            "model.name" => Field::ModelName,
            "model.version" => Field::ModelVersion,
            "occurred_at" => Field::OccurredAt,
            "risk" => Field::Risk,
            "outcome" => Field::Outcome,
            "latency_ms" => Field::LatencyMs,
            "citations.total" => Field::CitationsTotal,
            "citations.verified" => Field::CitationsVerified,
            "pii_detected" => Field::PiiDetected,
            "tool_calls" => Field::ToolCalls,
            p => Field::Attribute(p.strip_prefix("attributes.")?.to_string()),
        })
    }

    fn ty(&self) -> Type {
        match self {
            Field::EventId | Field::AgentId | Field::Workflow | Field::ModelProvider | Field::ModelName => {
                Type::Str
            }
            Field::ModelVersion | Field::Risk | Field::Outcome => Type::Str,
            Field::OccurredAt | Field::LatencyMs | Field::CitationsTotal | Field::CitationsVerified => {
                Type::Num
            }
            Field::PiiDetected => Type::Bool,
            Field::ToolCalls => Type::List,
            Field::Attribute(_) => Type::Dyn,
        }
    }

    /// Reads the field as a value (lists are not values; see [`Expr`]).
    #[inline]
    pub fn get<'a>(&self, t: &'a Telemetry) -> Val<'a> {
        match self {
            Field::EventId => Val::Str(&t.event_id),
            Field::AgentId => Val::Str(&t.agent_id),
            Field::Workflow => Val::Str(&t.workflow),
            Field::ModelProvider => Val::Str(&t.model.provider),
            Field::ModelName => Val::Str(&t.model.name),
            Field::ModelVersion => Val::Str(&t.model.version),
            Field::OccurredAt => Val::Num(t.occurred_at as f64),
            Field::Risk => Val::Str(t.risk.name()),
            Field::Outcome => Val::Str(t.outcome.name()),
            Field::LatencyMs => t.latency_ms.map_or(Val::Null, Val::Num),
            Field::CitationsTotal => t.citations.map_or(Val::Null, |c| Val::Num(c.total as f64)),
            Field::CitationsVerified => t.citations.map_or(Val::Null, |c| Val::Num(c.verified as f64)),
            Field::PiiDetected => t.pii_detected.map_or(Val::Null, Val::Bool),
            Field::ToolCalls => Val::Null,
            Field::Attribute(name) => match t.attributes.get(name) {
                None => Val::Null,
                Some(Attr::Bool(b)) => Val::Bool(*b),
                Some(Attr::Num(n)) => Val::Num(*n),
                Some(Attr::Str(s)) => Val::Str(s),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal.
    Lit(Lit),
    /// A field.
    Field(Field),
    /// `!e`
    Not(Box<Expr>),
    /// `-e`
    Neg(Box<Expr>),
    /// `a op b`
    Bin(BinOpBox),
    /// `e in [..]`
    In(Box<Expr>, Vec<Lit>),
    /// `len(tool_calls)`
    Len,
    /// `contains(tool_calls, "x")`
    Contains(String),
    /// `tool_calls[i]`
    Index(usize),
    /// `has(field)`
    Has(Field),
}

/// A binary operation (boxed operands).
#[derive(Debug, Clone, PartialEq)]
pub struct BinOpBox(BinOp, Box<Expr>, Box<Expr>);

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    /// Boolean.
    Bool(bool),
    /// Number.
    Num(f64),
    /// String.
    Str(String),
}

impl Lit {
    fn val(&self) -> Val<'_> {
        match self {
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Num(n) => Val::Num(*n),
            Lit::Str(s) => Val::Str(s),
        }
    }
}

/// A compiled, type-checked expression with its source text.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    /// The source.
    pub source: String,
    /// The tree.
    pub expr: Expr,
    /// Its static type.
    pub ty: Type,
    /// How it is evaluated (see [`Plan`]).
    plan: Plan,
}

/// The shapes most metric predicates take, evaluated without walking the tree: a field
/// (`latency_ms`) or a field against a literal (`citations.verified > 0`). Each clause
/// evaluates its predicate on every event, and the walk through `eval`'s recursion cost
/// three times the direct read. Both plans compute exactly what the tree does.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// `Expr::Field`.
    Field(Field),
    /// `Expr::Bin` of a field and a literal, with an operator other than `&&` and `||`
    /// (which are not plain functions of their operands' values).
    FieldOp(Field, BinOp, Lit),
    /// Anything else: the tree.
    Tree,
}

impl Plan {
    fn of(e: &Expr) -> Plan {
        match e {
            Expr::Field(f) => Plan::Field(f.clone()),
            Expr::Bin(BinOpBox(op, a, b)) if !matches!(op, BinOp::And | BinOp::Or) => match (&**a, &**b) {
                (Expr::Field(f), Expr::Lit(l)) => Plan::FieldOp(f.clone(), *op, l.clone()),
                _ => Plan::Tree,
            },
            _ => Plan::Tree,
        }
    }
}

impl Compiled {
    /// Parses and type-checks `src`.
    pub fn compile(src: &str) -> Result<Compiled, ParseError> {
        let toks = lex(src)?;
        if let Some(t) = toks.get(MAX_TOKENS) {
            return Err(ParseError {
                column: t.col,
                message: format!("the predicate is too long (more than {MAX_TOKENS} tokens)"),
            });
        }
        let mut p = Parser { toks, pos: 0, src_len: src.len(), depth: 0 };
        let (expr, ty) = p.expr()?;
        if let Some(t) = p.toks.get(p.pos) {
            return Err(ParseError { column: t.col, message: format!("unexpected {}", t.tok) });
        }
        let plan = Plan::of(&expr);
        Ok(Compiled { source: src.to_string(), expr, ty, plan })
    }

    /// Evaluates against an event.
    #[inline]
    pub fn eval<'a>(&'a self, t: &'a Telemetry) -> Val<'a> {
        match &self.plan {
            Plan::Field(f) => f.get(t),
            Plan::FieldOp(f, op, l) => binary(*op, f.get(t), l.val()),
            Plan::Tree => eval(&self.expr, t),
        }
    }
}

fn eval<'a>(e: &'a Expr, t: &'a Telemetry) -> Val<'a> {
    match e {
        Expr::Lit(l) => l.val(),
        Expr::Field(f) => f.get(t),
        Expr::Not(a) => match eval(a, t) {
            Val::Bool(b) => Val::Bool(!b),
            _ => Val::Null,
        },
        Expr::Neg(a) => match eval(a, t) {
            Val::Num(n) => Val::Num(-n),
            _ => Val::Null,
        },
        Expr::Bin(BinOpBox(op, a, b)) => {
            let x = eval(a, t);
            match op {
                // Kleene logic, short-circuiting where the answer is known.
                BinOp::And => match x {
                    Val::Bool(false) => Val::Bool(false),
                    _ => match (x, eval(b, t)) {
                        (_, Val::Bool(false)) => Val::Bool(false),
                        (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
                        _ => Val::Null,
                    },
                },
                BinOp::Or => match x {
                    Val::Bool(true) => Val::Bool(true),
                    _ => match (x, eval(b, t)) {
                        (_, Val::Bool(true)) => Val::Bool(true),
                        (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
                        _ => Val::Null,
                    },
                },
                _ => binary(*op, x, eval(b, t)),
            }
        }
        Expr::In(a, list) => match eval(a, t) {
            Val::Null => Val::Null,
            v => Val::Bool(list.iter().any(|l| l.val() == v)),
        },
        Expr::Len => Val::Num(t.tool_calls.len() as f64),
        Expr::Contains(s) => Val::Bool(t.tool_calls.iter().any(|c| c == s)),
        Expr::Index(i) => t.tool_calls.get(*i).map_or(Val::Null, |s| Val::Str(s)),
        Expr::Has(f) => Val::Bool(match f {
            Field::ToolCalls => !t.tool_calls.is_empty(),
            f => f.get(t) != Val::Null,
        }),
    }
}

fn binary<'a>(op: BinOp, x: Val<'a>, y: Val<'a>) -> Val<'a> {
    use BinOp::*;
    match (x, y) {
        (Val::Num(a), Val::Num(b)) => match op {
            Eq => Val::Bool(a == b),
            Ne => Val::Bool(a != b),
            Lt => Val::Bool(a < b),
            Le => Val::Bool(a <= b),
            Gt => Val::Bool(a > b),
            Ge => Val::Bool(a >= b),
            Add => Val::Num(a + b),
            Sub => Val::Num(a - b),
            Mul => Val::Num(a * b),
            // Division by zero is null (e.g. verified/total with no citations), never inf.
            Div if b == 0.0 => Val::Null,
            Div => Val::Num(a / b),
            And | Or => Val::Null,
        },
        (Val::Str(a), Val::Str(b)) => match op {
            Eq => Val::Bool(a == b),
            Ne => Val::Bool(a != b),
            Lt => Val::Bool(a < b),
            Le => Val::Bool(a <= b),
            Gt => Val::Bool(a > b),
            Ge => Val::Bool(a >= b),
            _ => Val::Null,
        },
        (Val::Bool(a), Val::Bool(b)) => match op {
            Eq => Val::Bool(a == b),
            Ne => Val::Bool(a != b),
            _ => Val::Null,
        },
        _ => Val::Null,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(f64),
    Str(String),
    Op(&'static str),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Num(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Op(o) => write!(f, "`{o}`"),
        }
    }
}

struct Token {
    tok: Tok,
    col: usize,
}

const OPS: &[&str] =
    &["||", "&&", "==", "!=", "<=", ">=", "<", ">", "!", "+", "-", "*", "/", "(", ")", "[", "]", ",", "."];

fn lex(src: &str) -> Result<Vec<Token>, ParseError> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let col = src[..i].chars().count() + 1;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Token { tok: Tok::Ident(src[s..i].to_string()), col });
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || b[i] == b'.'
                    || b[i] == b'e'
                    || b[i] == b'E'
                    || ((b[i] == b'-' || b[i] == b'+') && matches!(b[i - 1], b'e' | b'E')))
            {
                i += 1;
            }
            let n: f64 = src[s..i]
                .parse()
                .map_err(|_| ParseError { column: col, message: format!("bad number `{}`", &src[s..i]) })?;
            out.push(Token { tok: Tok::Num(n), col });
        } else if c == b'"' || c == b'\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(ParseError { column: col, message: "unterminated string".into() }),
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') => {
                        // The escaped character may be several bytes long (a byte-wise skip
                        // landed inside it and panicked; found by the pact_yaml fuzz target).
                        match src[i + 1..].chars().next() {
                            Some(e) => {
                                s.push(e);
                                i += 1 + e.len_utf8();
                            }
                            None => {
                                return Err(ParseError { column: col, message: "unterminated string".into() })
                            }
                        }
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("in bounds");
                        s.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Token { tok: Tok::Str(s), col });
        } else if let Some(op) = OPS.iter().find(|o| src[i..].starts_with(**o)) {
            out.push(Token { tok: Tok::Op(op), col });
            i += op.len();
        } else {
            let ch = src[i..].chars().next().unwrap_or('?');
            return Err(ParseError { column: col, message: format!("unexpected character `{ch}`") });
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    src_len: usize,
    /// Current nesting of brackets, `!` and `-`.
    depth: u32,
}

/// Deepest nesting of brackets, `!` and `-` a predicate may have, and most tokens. The
/// parser and the evaluator recurse, so without bounds a long enough predicate in a pact
/// overflows the stack (found by the predicate fuzz target); real predicates need a handful.
const MAX_DEPTH: u32 = 64;
const MAX_TOKENS: usize = 4096;

type Typed = (Expr, Type);

impl Parser {
    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.src_len + 1, |t| t.col)
    }
    fn err<T>(&self, col: usize, msg: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { column: col, message: msg.into() })
    }

    /// Runs one nesting level, refusing to go deeper than [`MAX_DEPTH`].
    fn nested(&mut self, level: fn(&mut Parser) -> Result<Typed, ParseError>) -> Result<Typed, ParseError> {
        if self.depth >= MAX_DEPTH {
            return self.err(self.col(), format!("nested too deeply (at most {MAX_DEPTH} levels)"));
        }
        self.depth += 1;
        let r = level(self);
        self.depth -= 1;
        r
    }
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token { tok: Tok::Op(o), .. }) if *o == op)
    }
    fn peek_ident(&self, id: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Token { tok: Tok::Ident(o), .. }) if o == id)
    }
    fn expect_op(&mut self, op: &str) -> Result<(), ParseError> {
        if self.peek_op(op) {
            self.pos += 1;
            Ok(())
        } else {
            let found = self.toks.get(self.pos).map_or("the end".to_string(), |t| t.tok.to_string());
            self.err(self.col(), format!("expected `{op}`, found {found}"))
        }
    }

    fn expr(&mut self) -> Result<Typed, ParseError> {
        self.logic(0)
    }

    fn logic(&mut self, level: u8) -> Result<Typed, ParseError> {
        let (op, sym) = if level == 0 { (BinOp::Or, "||") } else { (BinOp::And, "&&") };
        let col = self.col();
        let mut left = if level == 0 { self.logic(1)? } else { self.unary()? };
        while self.peek_op(sym) {
            self.pos += 1;
            let rcol = self.col();
            let right = if level == 0 { self.logic(1)? } else { self.unary()? };
            for (c, t) in [(col, left.1), (rcol, right.1)] {
                if !matches!(t, Type::Bool | Type::Dyn) {
                    return self.err(c, format!("`{sym}` needs booleans, found a {t}"));
                }
            }
            left = (Expr::Bin(BinOpBox(op, Box::new(left.0), Box::new(right.0))), Type::Bool);
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Typed, ParseError> {
        self.nested(Parser::unary_level)
    }

    fn unary_level(&mut self) -> Result<Typed, ParseError> {
        if self.peek_op("!") {
            let col = self.col();
            self.pos += 1;
            let (e, t) = self.unary()?;
            if !matches!(t, Type::Bool | Type::Dyn) {
                return self.err(col, format!("`!` needs a boolean, found a {t}"));
            }
            return Ok((Expr::Not(Box::new(e)), Type::Bool));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Typed, ParseError> {
        let col = self.col();
        let left = self.sum()?;
        if self.peek_ident("in") {
            self.pos += 1;
            self.expect_op("[")?;
            let mut lits = Vec::new();
            while !self.peek_op("]") {
                let c = self.col();
                let (e, t) = self.primary()?;
                let Expr::Lit(l) = e else { return self.err(c, "`in [...]` takes literals only") };
                check_comparable(left.1, t, col)?;
                lits.push(l);
                if !self.peek_op("]") {
                    self.expect_op(",")?;
                }
            }
            self.pos += 1;
            return Ok((Expr::In(Box::new(left.0), lits), Type::Bool));
        }
        let op = ["==", "!=", "<=", ">=", "<", ">"].into_iter().find(|o| self.peek_op(o));
        let Some(op) = op else { return Ok(left) };
        self.pos += 1;
        let right = self.sum()?;
        check_comparable(left.1, right.1, col)?;
        if matches!(op, "<" | "<=" | ">" | ">=") && (left.1 == Type::Bool || right.1 == Type::Bool) {
            return self.err(col, "booleans can only be compared with `==` or `!=`");
        }
        let op = match op {
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            "<" => BinOp::Lt,
            "<=" => BinOp::Le,
            ">" => BinOp::Gt,
            _ => BinOp::Ge,
        };
        Ok((Expr::Bin(BinOpBox(op, Box::new(left.0), Box::new(right.0))), Type::Bool))
    }

    fn sum(&mut self) -> Result<Typed, ParseError> {
        self.arith(0)
    }

    fn arith(&mut self, level: u8) -> Result<Typed, ParseError> {
        let ops: [(&str, BinOp); 2] = if level == 0 {
            [("+", BinOp::Add), ("-", BinOp::Sub)]
        } else {
            [("*", BinOp::Mul), ("/", BinOp::Div)]
        };
        let col = self.col();
        let mut left = if level == 0 { self.arith(1)? } else { self.neg()? };
        while let Some((sym, op)) = ops.iter().find(|(s, _)| self.peek_op(s)).copied() {
            self.pos += 1;
            let rcol = self.col();
            let right = if level == 0 { self.arith(1)? } else { self.neg()? };
            for (c, t) in [(col, left.1), (rcol, right.1)] {
                if !matches!(t, Type::Num | Type::Dyn) {
                    return self.err(c, format!("`{sym}` needs numbers, found a {t}"));
                }
            }
            left = (Expr::Bin(BinOpBox(op, Box::new(left.0), Box::new(right.0))), Type::Num);
        }
        Ok(left)
    }

    fn neg(&mut self) -> Result<Typed, ParseError> {
        self.nested(Parser::neg_level)
    }

    fn neg_level(&mut self) -> Result<Typed, ParseError> {
        if self.peek_op("-") {
            let col = self.col();
            self.pos += 1;
            let (e, t) = self.neg()?;
            if let Expr::Lit(Lit::Num(n)) = e {
                return Ok((Expr::Lit(Lit::Num(-n)), Type::Num));
            }
            if !matches!(t, Type::Num | Type::Dyn) {
                return self.err(col, format!("`-` needs a number, found a {t}"));
            }
            return Ok((Expr::Neg(Box::new(e)), Type::Num));
        }
        self.primary()
    }

    fn path(&mut self, first: String) -> Result<String, ParseError> {
        let mut path = first;
        while self.peek_op(".") {
            self.pos += 1;
            match self.toks.get(self.pos) {
                Some(Token { tok: Tok::Ident(s), .. }) => {
                    path.push('.');
                    path.push_str(s);
                    self.pos += 1;
                }
                _ => return self.err(self.col(), "expected a field name after `.`"),
            }
        }
        Ok(path)
    }

    fn primary(&mut self) -> Result<Typed, ParseError> {
        let col = self.col();
        let Some(tok) = self.toks.get(self.pos).map(|t| t.tok.clone()) else {
            return self.err(col, "expression ends too early");
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok((Expr::Lit(Lit::Num(n)), Type::Num)),
            Tok::Str(s) => Ok((Expr::Lit(Lit::Str(s)), Type::Str)),
            Tok::Op("(") => {
                let e = self.expr()?;
                self.expect_op(")")?;
                Ok(e)
            }
            Tok::Ident(id) if id == "true" || id == "false" => {
                Ok((Expr::Lit(Lit::Bool(id == "true")), Type::Bool))
            }
            Tok::Ident(id) if self.peek_op("(") => {
                self.pos += 1;
                let acol = self.col();
                let arg = match self.toks.get(self.pos).map(|t| t.tok.clone()) {
                    Some(Tok::Ident(a)) => {
                        self.pos += 1;
                        self.path(a)?
                    }
                    _ => return self.err(acol, format!("`{id}` takes a field name")),
                };
                let out = match id.as_str() {
                    "len" if arg == "tool_calls" => (Expr::Len, Type::Num),
                    "contains" if arg == "tool_calls" => {
                        self.expect_op(",")?;
                        let c = self.col();
                        match self.toks.get(self.pos).map(|t| t.tok.clone()) {
                            Some(Tok::Str(s)) => {
                                self.pos += 1;
                                (Expr::Contains(s), Type::Bool)
                            }
                            _ => return self.err(c, "`contains` takes a string as its second argument"),
                        }
                    }
                    "has" => match Field::parse(&arg) {
                        Some(f) => (Expr::Has(f), Type::Bool),
                        None => return self.err(acol, unknown_field(&arg)),
                    },
                    "len" | "contains" => return self.err(acol, format!("`{id}` applies to `tool_calls`")),
                    _ => {
                        return self
                            .err(col, format!("unknown function `{id}`; expected len, contains or has"))
                    }
                };
                self.expect_op(")")?;
                Ok(out)
            }
            Tok::Ident(id) => {
                let path = self.path(id)?;
                let field = Field::parse(&path)
                    .ok_or_else(|| ParseError { column: col, message: unknown_field(&path) })?;
                if field == Field::ToolCalls && self.peek_op("[") {
                    self.pos += 1;
                    let c = self.col();
                    let i = match self.toks.get(self.pos).map(|t| t.tok.clone()) {
                        Some(Tok::Num(n)) if n >= 0.0 && n.fract() == 0.0 => n as usize,
                        _ => return self.err(c, "index must be a non-negative integer"),
                    };
                    self.pos += 1;
                    self.expect_op("]")?;
                    return Ok((Expr::Index(i), Type::Str));
                }
                if field == Field::ToolCalls {
                    return self.err(col, "`tool_calls` is a list: use len(tool_calls), contains(tool_calls, \"x\") or tool_calls[0]");
                }
                let ty = field.ty();
                Ok((Expr::Field(field), ty))
            }
            other => self.err(col, format!("unexpected {other}")),
        }
    }
}

fn check_comparable(a: Type, b: Type, col: usize) -> Result<(), ParseError> {
    if a == Type::Dyn || b == Type::Dyn || a == b {
        Ok(())
    } else {
        Err(ParseError { column: col, message: format!("cannot compare a {a} with a {b}") })
    }
}

fn unknown_field(path: &str) -> String {
    let best = FIELDS.iter().min_by_key(|f| edit_distance(f, path)).filter(|f| edit_distance(f, path) <= 3);
    match best {
        Some(b) => format!("unknown field `{path}` (did you mean `{b}`?)"),
        None => format!("unknown field `{path}`; fields are {}", FIELDS.join(", ")),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + (ca != *cb) as usize).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::telemetry::{Citations, Model, Outcome, Risk};

    fn event() -> Telemetry {
        Telemetry {
            event_id: "e1".into(),
            agent_id: "fin-01".into(),
            workflow: "finance".into(),
            model: Model { provider: "acme".into(), name: "m".into(), version: "v2".into() },
            occurred_at: 1_000,
            risk: Risk::High,
            outcome: Outcome::Refused,
            latency_ms: Some(1200.0),
            citations: Some(Citations { total: 3, verified: 2 }),
            pii_detected: None,
            tool_calls: vec!["search".into(), "calculator".into()],
            attributes: [("judge".to_string(), Attr::Num(4.5))].into_iter().collect(),
        }
    }

    fn ev(src: &str) -> Val<'static> {
        let c = Box::leak(Box::new(Compiled::compile(src).unwrap()));
        let t = Box::leak(Box::new(event()));
        c.eval(t)
    }

    /// The direct plans compute what the tree does, on every field kind, with values
    /// present, missing and of the other types.
    #[test]
    fn plans_evaluate_as_the_tree_does() {
        let fields = [
            "latency_ms",
            "citations.verified",
            "pii_detected",
            "outcome",
            "risk",
            "attributes.judge",
            "attributes.x",
        ];
        let lits = ["0", "1200", "-1", "'refused'", "'high'", "true", "false"];
        let ops = ["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/"];
        let mut events = vec![event()];
        let mut t = event();
        t.latency_ms = None;
        t.citations = Some(Citations { total: 0, verified: 0 });
        t.pii_detected = Some(true);
        t.outcome = Outcome::Ok;
        t.attributes = [("judge".to_string(), Attr::Str("4".into())), ("x".to_string(), Attr::Bool(false))]
            .into_iter()
            .collect();
        events.push(t);
        let (mut direct, mut compiled) = (0, 0);
        for f in fields {
            let mut srcs = vec![f.to_string()];
            for op in ops {
                srcs.extend(lits.iter().map(|l| format!("{f} {op} {l}")));
            }
            for src in srcs {
                // Type errors are refused at compile time; the rest must agree.
                let Ok(c) = Compiled::compile(&src) else { continue };
                compiled += 1;
                direct += (c.plan != Plan::Tree) as u32;
                for t in &events {
                    assert_eq!(c.eval(t), eval(&c.expr, t), "{src}");
                }
            }
        }
        assert_eq!(direct, compiled, "every field and field-against-literal predicate has a direct plan");
        assert!(compiled > 100, "{compiled}");
        for src in ["latency_ms > 1 && pii_detected", "1 < latency_ms", "!pii_detected", "latency_ms + 1 > 2"]
        {
            assert_eq!(Compiled::compile(src).unwrap().plan, Plan::Tree, "{src}");
        }
    }

    #[test]
    fn evaluates_fields_operators_and_functions() {
        assert_eq!(ev("citations.verified > 0"), Val::Bool(true));
        assert_eq!(ev("outcome == \"refused\""), Val::Bool(true));
        assert_eq!(ev("citations.verified / citations.total"), Val::Num(2.0 / 3.0));
        assert_eq!(ev("latency_ms"), Val::Num(1200.0));
        assert_eq!(ev("contains(tool_calls, 'search') && len(tool_calls) == 2"), Val::Bool(true));
        assert_eq!(ev("tool_calls[1]"), Val::Str("calculator"));
        assert_eq!(ev("tool_calls[5]"), Val::Null);
        assert_eq!(ev("model.version in [\"v1\", \"v2\"]"), Val::Bool(true));
        assert_eq!(ev("attributes.judge >= 4 && risk != 'low'"), Val::Bool(true));
        assert_eq!(ev("!(1 + 2 * 3 == 7)"), Val::Bool(false));
        assert_eq!(ev("-latency_ms < -1000"), Val::Bool(true));
    }

    #[test]
    fn nesting_and_length_are_bounded_so_the_stack_is() {
        // Overflowed the stack before (a pact with a few thousand brackets).
        let nested = |n: usize| format!("{}latency_ms > 1{}", "(".repeat(n), ")".repeat(n));
        assert!(Compiled::compile(&nested(20)).is_ok());
        for deep in [nested(1000), "!".repeat(4000) + "true", "-".repeat(4000) + "1"] {
            let err = Compiled::compile(&deep).unwrap_err();
            assert!(err.message.contains("nested too deeply"), "{err:?}");
        }
        let long = vec!["1"; 3000].join(" + ") + " > 2";
        assert!(Compiled::compile(&long).unwrap_err().message.contains("too long"));
        // The longest accepted chain evaluates on a 1 MiB stack (threads get 2 MiB).
        let chain = vec!["latency_ms"; 2047].join(" + ") + " > 0";
        let c = Compiled::compile(&chain).unwrap();
        let v = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || c.eval(&event()) == Val::Bool(true))
            .unwrap()
            .join()
            .unwrap();
        assert!(v);
    }

    #[test]
    fn an_escaped_multibyte_character_is_kept_whole() {
        // Panicked before: the escape skipped one byte of `\u{a0}` and sliced inside it.
        assert_eq!(ev("model.name == \"m\\\u{a0}x\""), Val::Bool(false));
        let c = Compiled::compile("attributes.lang == 'caf\\é'").unwrap();
        let mut t = event();
        t.attributes.insert("lang", Attr::Str("café".into()));
        assert_eq!(c.eval(&t), Val::Bool(true));
        assert!(Compiled::compile("'abc\\").is_err(), "an escape at the end is unterminated");
    }

    #[test]
    fn missing_fields_are_null_with_kleene_logic() {
        assert_eq!(ev("pii_detected"), Val::Null);
        assert_eq!(ev("pii_detected == true"), Val::Null);
        assert_eq!(ev("pii_detected && false"), Val::Bool(false));
        assert_eq!(ev("pii_detected || true"), Val::Bool(true));
        assert_eq!(ev("has(pii_detected)"), Val::Bool(false));
        assert_eq!(ev("attributes.nope > 1"), Val::Null);
    }

    #[test]
    fn type_errors_and_unknown_fields_are_located() {
        let e = Compiled::compile("citations.verifed > 0").unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("did you mean `citations.verified`"), "{}", e.message);
        let e = Compiled::compile("outcome > 3").unwrap_err();
        assert!(e.message.contains("cannot compare a string with a number"), "{}", e.message);
        let e = Compiled::compile("latency_ms && true").unwrap_err();
        assert!(e.message.contains("needs booleans"), "{}", e.message);
        let e = Compiled::compile("latency_ms >").unwrap_err();
        assert_eq!(e.column, 13);
        assert!(Compiled::compile("outcome == \"x").is_err());
        assert!(Compiled::compile("frobnicate(tool_calls)").is_err());
    }
}
