"""Frozen teachers: OpenCLIP (CLIP side) and SAM (SAM side), with their fingerprints."""

from pipeline.teachers.sam_teacher import SamTeacher, load_sam_teacher
from storage_schemas.models.clip_teacher import ClipTeacher, load_clip_teacher

__all__ = ["ClipTeacher", "SamTeacher", "load_clip_teacher", "load_sam_teacher"]
