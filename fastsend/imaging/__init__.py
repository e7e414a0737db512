"""Images to JPEG: image inputs and snapshots (:mod:`.jpeg`), the libjpeg-turbo binding (:mod:`.turbo`) and
the encoding of an output drawn over its input as a pair (:mod:`.pair`).

Internal: import the public names from :mod:`fastsend`.
"""
