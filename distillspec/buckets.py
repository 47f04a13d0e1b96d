"""Cloud Storage bucket names, checked as Cloud Storage checks them: a name it would refuse passed `validate` and
failed in the pods (`gs://ab/...`, `gs://-runs/...`), after the TPU slice had been scheduled.

The rules (cloud.google.com/storage/docs/buckets#naming): 3 to 63 characters, or up to 222 with dots where each
dot-separated part has at most 63; lower-case letters, digits, '-', '_' and '.'; a letter or digit at both ends;
not an IP address; no "goog" prefix.
"""

from __future__ import annotations

import re

_CHARACTERS = re.compile(r"^[a-z0-9._-]+$")
_IP_ADDRESS = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
SCHEMES = ("gs", "gcs")
HINT = "write gs://BUCKET/path, the bucket 3-63 lower-case letters, digits, '-', '_' or '.', a letter or digit at both ends"


def bucket_of(url: str) -> str | None:
    """The bucket of a gs:// (or gcs://) URL; None for any other path."""
    scheme, sep, rest = url.partition("://")
    return rest.split("/", 1)[0] if sep and scheme in SCHEMES else None


def bucket_name_problem(bucket: str) -> str | None:
    """Why Cloud Storage would refuse `bucket` as a name, or None."""
    if not bucket:
        return "names no bucket"
    if not _CHARACTERS.match(bucket):
        return f"names no valid bucket ({bucket!r}: only lower-case letters, digits, '-', '_' and '.')"
    longest = 222 if "." in bucket else 63
    if not 3 <= len(bucket) <= longest or max(len(part) for part in bucket.split(".")) > 63:
        return f"names no valid bucket ({bucket!r}: a bucket name has 3 to 63 characters)"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return f"names no valid bucket ({bucket!r}: it begins and ends with a letter or digit)"
    if _IP_ADDRESS.match(bucket):
        return f"names no valid bucket ({bucket!r} is an IP address)"
    if bucket.startswith("goog"):
        return f"names no valid bucket ({bucket!r}: Cloud Storage reserves names beginning with 'goog')"
    return None
