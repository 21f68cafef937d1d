"""Releases: immutable directories, the artifacts they come from, and the store."""
