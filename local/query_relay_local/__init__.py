"""Local tooling for query-relay: never deployed (emulators, embedded AWS stack, CLI)."""
