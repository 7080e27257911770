"""Canonical flow/session schema and the stages that shape flows (sessions, enrichment)."""
