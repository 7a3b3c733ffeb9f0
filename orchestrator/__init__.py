"""vodflow: turns "a live recording finished" into finished media through Tencent Cloud VOD.

The import package is ``orchestrator``; the distribution and the command are ``vodflow``.
"""

__version__ = "0.1.0"
