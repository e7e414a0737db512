"""The send engine, behind ``EventWriter``: a prepared event is admitted to a bounded queue, encoded on
encoder threads into one request, posted by the loop thread under the retry policy, and settled once in
the ledger; what cannot be delivered now goes to the spool, which the drainer sends later.

Internal: import the public names from :mod:`fastsend`.
"""
