//! tern controller library.
