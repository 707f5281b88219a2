//! Prepared statements or portals of one session by name. Drivers that use the unnamed statement
//! and portal (libpq's `PQexecParams`, pgbench `-M extended`) replace them on every execution,
//! so the unnamed one lives in its own slot: no key allocation, no hashing.

use std::collections::HashMap;

/// Values by statement or portal name; `""` is the unnamed one.
#[derive(Debug)]
pub struct Named<T> {
    unnamed: Option<T>,
    named: HashMap<String, T>,
}

impl<T> Default for Named<T> {
    fn default() -> Self {
        Self {
            unnamed: None,
            named: HashMap::new(),
        }
    }
}

impl<T> Named<T> {
    /// The value named `name`.
    pub fn get(&self, name: &str) -> Option<&T> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }

    /// The value named `name`, mutably.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut T> {
        if name.is_empty() {
            self.unnamed.as_mut()
        } else {
            self.named.get_mut(name)
        }
    }

    /// Sets the value named `name` (replacing any).
    pub fn insert(&mut self, name: &str, value: T) {
        if name.is_empty() {
            self.unnamed = Some(value);
        } else {
            self.named.insert(name.to_owned(), value);
        }
    }

    /// Removes the value named `name`.
    pub fn remove(&mut self, name: &str) -> Option<T> {
        if name.is_empty() {
            self.unnamed.take()
        } else {
            self.named.remove(name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnamed_and_named_are_kept_apart() {
        let mut n: Named<u32> = Named::default();
        assert_eq!(n.get(""), None);
        n.insert("", 1);
        n.insert("s1", 2);
        assert_eq!(n.get(""), Some(&1));
        assert_eq!(n.get("s1"), Some(&2));
        assert_eq!(n.get("s2"), None);
        n.insert("", 3);
        if let Some(v) = n.get_mut("s1") {
            *v = 4;
        }
        assert_eq!((n.get(""), n.get("s1")), (Some(&3), Some(&4)));
        assert_eq!(n.remove(""), Some(3));
        assert_eq!(n.get(""), None);
        assert_eq!(n.remove("s1"), Some(4));
        assert_eq!(n.remove("s1"), None);
    }
}
