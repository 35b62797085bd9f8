"""Adapters for the event formats platforms already send: the Segment HTTP Tracking API (also
spoken by RudderStack and Jitsu) and PostHog's capture API. Each turns a request body into our
own wire-format event dicts, which then take the same path as `POST /v1/events` (validation, dead
letters, metrics, the detector core)."""
