"""OpenAI Batch-compatible intake under /v1 (files and batches)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
