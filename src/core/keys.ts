/** Key layout of everything Trivisor keeps in the key-value store. */
export const keys = {
  guestPrefix: '/trivisor/guests/',
  guest: (name: string): string => `/trivisor/guests/${name}`,
  guestStatusPrefix: '/trivisor/guest-status/',
  guestStatus: (name: string): string => `/trivisor/guest-status/${name}`,
  /** What the NIC observer saw of a running guest's NICs → GuestNetworkObservation. */
  guestNetworkPrefix: '/trivisor/guest-network/',
  guestNetwork: (name: string): string => `/trivisor/guest-network/${name}`,
  imagePrefix: '/trivisor/images/',
  image: (fingerprint: string): string => `/trivisor/images/${fingerprint}`,
  imageAliasPrefix: '/trivisor/image-aliases/',
  imageAlias: (alias: string): string => `/trivisor/image-aliases/${alias}`,
  hostPrefix: '/trivisor/hosts/',
  host: (name: string): string => `/trivisor/hosts/${name}`,
  networkPrefix: '/trivisor/networks/',
  network: (name: string): string => `/trivisor/networks/${name}`,
  networkStatusPrefix: '/trivisor/network-status/',
  networkStatus: (name: string): string => `/trivisor/network-status/${name}`,
  /** Claims of network addresses: `/trivisor/network-addresses/NET/IP` → NetworkAddressClaim. */
  networkAddressPrefix: '/trivisor/network-addresses/',
  networkAddresses: (network: string): string => `/trivisor/network-addresses/${network}/`,
  networkAddress: (network: string, ip: string): string => `/trivisor/network-addresses/${network}/${ip}`,
} as const;
