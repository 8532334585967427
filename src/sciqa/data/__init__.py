"""ScienceQA problems from any source, with stable string ids."""
from sciqa.data.problems import Problem
from sciqa.data.sources import load_problems

__all__ = ["Problem", "load_problems"]
