//! [`ServiceKey`]: what names a service in a [`Registry`](crate::Registry).

use crate::{
    error::Error,
    service::{HeadlessService, split_spec},
};

mod sealed {
    pub trait Sealed {}
}

/// What names a service in a [`Registry`](crate::Registry): a [`HeadlessService`] (owned or borrowed), or a
/// string `"name.namespace"` or `"name.namespace:port"`.
pub trait ServiceKey: sealed::Sealed {
    /// The index of the service among `services`.
    #[doc(hidden)]
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error>;
}

impl sealed::Sealed for HeadlessService {}
impl ServiceKey for HeadlessService {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        services
            .iter()
            .position(|s| s == self)
            .ok_or_else(|| Error::UnknownService(self.to_string()))
    }
}

impl<T: ServiceKey + ?Sized> sealed::Sealed for &T {}
impl<T: ServiceKey + ?Sized> ServiceKey for &T {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        (**self).index_in(services)
    }
}

impl sealed::Sealed for str {}
impl ServiceKey for str {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        let (name, namespace, port) = split_spec(self)?;
        if port.is_some() {
            return self.parse::<HeadlessService>()?.index_in(services);
        }
        let matches: Vec<(usize, &HeadlessService)> = services
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_named(name, namespace))
            .collect();
        match matches.as_slice() {
            [(index, _)] => Ok(*index),
            [] => Err(Error::UnknownService(self.to_owned())),
            many => Err(Error::AmbiguousService {
                query: self.to_owned(),
                matches: many.iter().map(|(_, s)| s.to_string()).collect(),
            }),
        }
    }
}

impl sealed::Sealed for String {}
impl ServiceKey for String {
    fn index_in(&self, services: &[HeadlessService]) -> Result<usize, Error> {
        self.as_str().index_in(services)
    }
}
