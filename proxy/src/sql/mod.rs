//! Understanding SQL text as the server does: the session's lexer settings ([`lexer`]) and the
//! fail-closed gate over PostgreSQL's own grammar ([`gate`]).

pub mod gate;
pub mod lexer;
