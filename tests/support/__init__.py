"""Helpers the tests share: loopback servers (scripted, hostile, the reference service in a child process),
the books that check every event settled once, the browser, and inference's test set-up."""
