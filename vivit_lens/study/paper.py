"""The paper whose analysis `vivit-lens` reproduces, named once for the README, the CLI help and the reports.

    from vivit_lens.study.paper import CITATION, cite
    CITATION              # 'Sai Chereddy, "Attention Gathers, MLPs Compose: ..." (arXiv:2603.11142, 2026)'
    cite("Table 2")       # 'Table 2 of Chereddy (2026), arXiv:2603.11142'
"""

from __future__ import annotations

TITLE = "Attention Gathers, MLPs Compose: A Causal Analysis of an Action-Outcome Circuit in VideoViT"
AUTHOR = "Sai Chereddy"
YEAR = 2026
ARXIV = "2603.11142"
URL = f"https://arxiv.org/abs/{ARXIV}"
CITATION = f'{AUTHOR}, "{TITLE}" (arXiv:{ARXIV}, {YEAR})'
SHORT = f"{AUTHOR.split()[-1]} ({YEAR}), arXiv:{ARXIV}"


def cite(what: str) -> str:
    """'`what` of Chereddy (2026), arXiv:2603.11142': a table or figure of the paper, named with its source."""
    return f"{what} of {SHORT}"


__all__ = ["ARXIV", "AUTHOR", "CITATION", "SHORT", "TITLE", "URL", "YEAR", "cite"]
