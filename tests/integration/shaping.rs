//! Placeholder: tests for issue 6 (shaping) land here.
