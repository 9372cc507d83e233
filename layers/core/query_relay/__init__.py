"""query-relay: run long asynchronous queries on other people's services and land results in S3."""

__version__ = "0.1.0"
