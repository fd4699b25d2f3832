//! Delivery-log checker (filled in below).
