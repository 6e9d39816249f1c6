"""The ``agentq`` command: ``agentq dev``, ``agentq keys``, ``agentq migrate``."""
