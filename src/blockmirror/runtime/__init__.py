"""The asyncio runtime: drives the sans-IO protocol and engines over real
sockets. Every engine call of a node runs on one dedicated thread
(`EngineThread`); sockets stay on the event loop."""
