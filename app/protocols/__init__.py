"""The protocols other clients already speak, each one module over the engine's typed events (engine/events.py):
FunASR's WebSocket protocol, OpenAI's transcription API and its realtime transcription over WebSocket. Parastream's
own REST + SSE protocol is in app/routes/."""
