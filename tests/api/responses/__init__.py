"""Tests of the Responses API (src/hotspare/api/responses/)."""
