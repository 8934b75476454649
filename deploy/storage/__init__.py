"""The bucket: client and verified transfers (bucket), directory sync (sync, cache), checkpoints, permissions.

``from deploy.storage import Storage`` is the documented entry point.
"""

from deploy.storage.bucket import (CHECKPOINTS, CHUNK, DATASETS, IMAGES, LOGS, MB, ObjectInfo, Storage,
                                   TransferResult, file_sha256, make_client, safe_relative, transfer_config)

__all__ = ["CHECKPOINTS", "CHUNK", "DATASETS", "IMAGES", "LOGS", "MB", "ObjectInfo", "Storage", "TransferResult",
           "file_sha256", "make_client", "safe_relative", "transfer_config"]
