//! Ricart-Agrawala and token locks and barriers for dsm, sans-IO
