"""The ``distilserve`` command line and the tools that depend on both sides.

``models/`` (the HTTP-free model side) and ``server/`` (the HTTP side) never import this
package; it imports them: the command line reaches every subcommand, and ``distilserve.bench``
starts servers and loads bundles. See docs/architecture.md.
"""
