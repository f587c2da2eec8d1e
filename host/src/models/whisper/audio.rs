//! The log-mel front end (filled in by the audio work).
