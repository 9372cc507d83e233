"""Upstream emulators: real HTTP servers that speak each vendor's async-task protocol."""
