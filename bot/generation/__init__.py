"""The generation pipeline in parts: planning, single-flight, enhancement, records, progress,
and the pipeline that runs them in order (``pipeline.py``, read it first)."""

from bot.generation.pipeline import GenerationPipeline

__all__ = ["GenerationPipeline"]
