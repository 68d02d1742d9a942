//! The FlexOlmo mixture-of-experts model on burn (work in progress).
