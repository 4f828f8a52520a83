//! `dedisk ui`: a read-only dashboard, server-rendered HTML with inline SVG plots and
//! no script. `data` reads what is shown, `page` and `plot` draw it, `http` answers
//! requests (and checks the token).

pub mod data;
pub mod http;
pub mod page;
pub mod plot;
