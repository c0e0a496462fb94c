"""The embedded demo: a generated tree, a local S3 endpoint and its expected statuses.

Needs the ``[demo]`` extra (moto, boto3); the verifier itself does not.
"""
