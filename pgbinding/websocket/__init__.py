"""The WebSocket side: the demultiplexing consumer, frame checks, the bounded outbound
queue, inbound actions, subscriptions (snapshot, replay, judging), and the channel-layer
watch."""
