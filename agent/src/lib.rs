//! tern agent library.
