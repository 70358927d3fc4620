"""User-facing entry points: REST API, portal, admin, CLI.

Management commands are interfaces too; they live where Django looks for them.
"""
