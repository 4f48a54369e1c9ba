//! PostgreSQL's own tests, and the conformance suite run against a throwaway schema.
