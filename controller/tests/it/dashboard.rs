//! The dashboard's frame: login and logout through the form, session
//! cookies, CSRF on every form, security headers and assets.
