"""Command-line tools: short pipelines over the library, with the Go NSQ apps' flag spellings.

==================  ===================  =================================================
script              Go app               what it does
==================  ===================  =================================================
``rxnsq-tail``      ``nsq_tail``         print a topic's messages to stdout
``rxnsq-pub``       ``to_nsq``           publish stdin, one message per delimited chunk
``rxnsq-to-file``   ``nsq_to_file``      archive topics into rolling (gzipped) files
``rxnsq-to-nsq``    ``nsq_to_nsq``       relay topics to other nsqd, FIN after the republish
``rxnsq-stat``      ``nsq_stat``         poll ``/stats``: rates and depths of a channel
==================  ===================  =================================================

Each also runs as ``python -m rxnsq.cli.<module>`` (``tail``, ``pub``, ``to_file``, ``to_nsq``,
``stat``). The names never shadow the Go binaries. The tools run on :func:`rxnsq.runner.run`:
SIGINT and SIGTERM drain the in-flight messages before exiting, so stopping loses nothing.
See ``docs/cli.md``. ``rxnsq worker MODULE:FACTORY`` (:mod:`rxnsq.cli.worker`) runs a user's
pipeline as a service in supervised processes: see ``docs/worker.md``.
"""
