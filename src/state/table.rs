//! Sharded LRU table with an exact entry bound.

/// A string-keyed LRU table shared between tasks.
pub struct BoundedTable<V> {
    _v: std::marker::PhantomData<V>,
}
