"""What every stage shares: Arrow schemas, key rules, the evidence rules, config, S3 access.

Nothing here imports a stage, so a rule declared here (a status, a checksum
encoding, a key's partition) means the same thing in every stage that uses it.
"""
