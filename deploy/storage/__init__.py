"""The bucket: client and verified transfers (bucket), how long a call may take and its retries (retry), directory
sync (sync, cache), checkpoints, permissions, small JSON objects with conditional writes (objects) and what the
store promises about them (conditions).

``from deploy.storage import Storage`` is the documented entry point.
"""

from deploy.storage.bucket import (CHECKPOINTS, CHECKS, CHUNK, DATASETS, IMAGES, LOGS, MB, ObjectInfo, Storage,
                                   WHEELS, TransferResult, file_sha256, make_client, safe_relative, transfer_config)

__all__ = ["CHECKPOINTS", "CHECKS", "CHUNK", "DATASETS", "IMAGES", "LOGS", "MB", "ObjectInfo", "Storage",
           "TransferResult", "WHEELS", "file_sha256", "make_client", "safe_relative", "transfer_config"]
