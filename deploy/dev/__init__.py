"""Demo and CI tooling: embedded S3 and SSH servers, the quick start, the test base image. Never shipped."""
