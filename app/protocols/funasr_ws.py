"""Placeholder: filled in by issue 13's work."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
