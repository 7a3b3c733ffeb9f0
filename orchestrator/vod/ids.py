"""VOD task IDs: the case-insensitive form used when an exact match fails.

Tencent's documents spell a task type's prefix in different cases (``transcode-...`` in the
seed's answer, ``Transcode-...`` in a documented callback). vodflow keeps IDs exactly as VOD gave
them and correlates exactly first; only when that fails does it compare the folded form, with the
prefix before the first ``-`` lower-cased, and it logs that it did.
"""

from __future__ import annotations


def fold_task_id(task_id: str) -> str:
    prefix, sep, rest = task_id.partition("-")
    return prefix.lower() + sep + rest
