//! dsbox-agent: the agent loop — an OpenAI-compatible model client, the tag-protocol and
//! tool-calling scaffolds, parallel rollouts in sandboxes, trajectories and pass@k.
