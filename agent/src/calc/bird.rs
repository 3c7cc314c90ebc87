//! BIRD configuration rendering (pure). See render().
