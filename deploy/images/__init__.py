"""Training images through the bucket: push and pull (transfer), the layer store (store), docker save
archives (archive).
"""

from deploy.images.transfer import *  # noqa: F401,F403
